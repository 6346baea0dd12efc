"""One configuration story: the README's table and .env.example are the settings model."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sipagent.cli.main import app
from sipagent.config import (
    ENV_ONLY_FIELDS,
    AgentSettings,
    env_example,
    flag_name,
    replace_table,
    settings_table_markdown,
    unknown_env_settings,
)

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python -m sipagent.config --update-docs` from the repository root"


def test_the_readme_table_is_generated_from_the_settings_model():
    readme = (ROOT / "README.md").read_text()
    assert settings_table_markdown() in readme, REGENERATE
    assert replace_table(readme) == readme


def test_env_example_lists_every_setting():
    assert (ROOT / ".env.example").read_text() == env_example(), REGENERATE


def test_every_setting_is_described_and_has_a_row():
    table = settings_table_markdown()
    for name, field in AgentSettings.model_fields.items():
        assert field.description, f"{name} needs a description (it is its README row)"
        assert f"`SIPAGENT_{name.upper()}`" in table or name in ENV_ONLY_FIELDS


def test_serve_doctor_call_and_console_share_every_flag():
    flags = [flag_name(name) for name in AgentSettings.model_fields if name not in ENV_ONLY_FIELDS]
    for command in ("serve", "doctor", "call", "console"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0
        missing = [flag for flag in flags if flag not in result.output]
        assert not missing, f"{command} lacks {missing}"


def test_unknown_variables_are_named_with_a_suggestion():
    warnings = unknown_env_settings(
        ["SIPAGENT_BIND", "SIPAGENT_RTP_PORT", "SIPAGENT_MIGRATIONS_DIR", "PATH", "DATABASE_URL"]
    )
    assert warnings == [
        "SIPAGENT_RTP_PORT is not a sipagent setting and is ignored "
        "(did you mean SIPAGENT_RTP_PORTS?)"
    ]
