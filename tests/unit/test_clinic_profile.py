import pytest

from sipagent.clinic import ClinicConfigError, load_clinic
from sipagent.config import AgentSettings

CUSTOM = """
name = "Harbor Smiles"
persona = "Ana"
greeting = "Harbor Smiles, {persona} speaking."
timezone = "Europe/Lisbon"
region = "pt"
transfer_uri = "sip:desk@pbx.example"
[hours]
days = ["tuesday", "saturday"]
opens = "08:30"
closes = "13:00"
slot_minutes = 15
[services]
cleaning = 45
"""


def test_default_is_sunrise_dental():
    profile = load_clinic()
    assert profile.greeting.startswith("Thank you for calling Sunrise Dental, this is Sarah")
    assert profile.hours.open_days == (0, 1, 2, 3, 4) and profile.hours.durations["cleaning"] == 60


def test_custom_file_drives_hours_services_and_greeting(tmp_path):
    path = tmp_path / "clinic.toml"
    path.write_text(CUSTOM)
    profile = load_clinic(path)
    assert profile.greeting == "Harbor Smiles, Ana speaking."
    assert profile.hours.open_days == (1, 5) and profile.hours.slot_minutes == 15
    assert profile.hours.durations == {
        "cleaning": 45, "checkup": 15, "emergency": 15, "consultation": 15,
    }  # fmt: skip
    assert str(profile.hours.opens) == "08:30:00" and profile.hours.timezone == "Europe/Lisbon"
    assert profile.region == "PT" and load_clinic().region == "US"


def test_settings_override_single_fields(tmp_path):
    path = tmp_path / "clinic.toml"
    path.write_text(CUSTOM)
    settings = AgentSettings(_env_file=None, clinic_file=str(path), persona="Bea",
                             clinic_timezone="America/Chicago")  # fmt: skip
    profile = settings.clinic_profile()
    assert profile.persona == "Bea" and profile.name == "Harbor Smiles"
    assert profile.hours.timezone == "America/Chicago"
    assert profile.transfer_uri == "sip:desk@pbx.example"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('timezone = "Mars/Olympus"', "unknown time zone"),
        ('[hours]\ndays = ["funday"]', "days"),
        ("[services]\nwhitening = 30", "not bookable"),
        ('[hours]\nopens = "18:00"\ncloses = "09:00"', "closes must be after opens"),
        ("name = ", "clinic.toml"),
        ('region = "Portugal"', "not an ISO country code"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, change, message):
    path = tmp_path / "clinic.toml"
    path.write_text(change)
    with pytest.raises(ClinicConfigError, match=message):
        load_clinic(path)
