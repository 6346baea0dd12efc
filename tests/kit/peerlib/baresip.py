"""baresip 1.0 as a headless softphone caller: plays a WAV, records what it hears.

    result = await baresip_call(tmp_path, "sip:agent@127.0.0.1:5060", audio / "caller.wav",
                                duration=6, registrar=kam.address)
    assert result.established
    heard = result.recording          # dump-*-dec.wav: 8 kHz mono S16, what baresip received

The source WAV (8 kHz mono S16) is padded with silence to outlast the call: baresip hangs up
when its audio file ends ("aufile: end of file").  The call ends after ``duration`` s (``-t``).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .audio import read_wav_pcm16, silence_pcm16, wav_info, write_wav_pcm16
from .common import (
    LOOPBACK,
    PEERS_DIR,
    ProcessResult,
    communicate_with_timeout,
    free_rtp_port,
    free_udp_port,
    render_template,
    start_process,
    which,
)

TEMPLATE_DIR = PEERS_DIR / "baresip"


@dataclass
class BaresipResult(ProcessResult):
    """A finished baresip run."""

    recordings: list[Path] = field(default_factory=list)  # dump-*-dec.wav (heard)
    sent: list[Path] = field(default_factory=list)  # dump-*-enc.wav (sent)
    config_dir: Path = field(default_factory=Path)

    @property
    def log(self) -> str:
        return self.stdout + self.stderr

    @property
    def established(self) -> bool:
        return "Call established" in self.log

    @property
    def registered(self) -> bool:
        """baresip logged a successful REGISTER ("200 OK ... binding")."""
        return any("200 OK" in line and "binding" in line for line in self.log.splitlines())

    @property
    def recording(self) -> Path | None:
        """The (first) recording of what baresip heard, if any."""
        return self.recordings[0] if self.recordings else None

    def check(self) -> BaresipResult:
        if self.timed_out or not self.established:
            raise AssertionError(f"baresip call not established:\n{self.describe()}")
        return self


class Baresip:
    """One baresip instance (own config dir under ``workdir``) that places one call."""

    def __init__(
        self,
        workdir: Path,
        wav: Path,
        *,
        registrar: str | None = None,
        user: str = "caller",
        password: str = "callerpw",
        outbound_proxy: str | None = None,
        codecs: str = "PCMU",
        sip_port: int | None = None,
        rtp_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.config_dir = self.workdir / "baresip"
        self.rec_dir = self.workdir / "recordings"
        self.source_wav = Path(wav)
        self.registrar = registrar
        self.user = user
        self.password = password
        self.outbound_proxy = outbound_proxy
        self.codecs = codecs
        self.sip_port = sip_port if sip_port is not None else free_udp_port()
        self.rtp_port = rtp_port if rtp_port is not None else free_rtp_port(span=4)

    def account_line(self) -> str:
        if self.registrar:
            aor = f"<sip:{self.user}@{self.registrar}>"
            params = [f"auth_pass={self.password}", "regint=300"]
        else:
            aor = f"<sip:{self.user}@{LOOPBACK}>"
            params = ["regint=0"]
        if self.outbound_proxy:
            params.append(f'outbound="sip:{self.outbound_proxy}"')
        params += [f"audio_codecs={self.codecs}", "medianat=", "mediaenc="]
        return aor + ";" + ";".join(params)

    def prepare(self, duration: float) -> Path:
        """Write config, accounts and the padded source WAV; return the WAV used."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.rec_dir.mkdir(parents=True, exist_ok=True)
        info = wav_info(self.source_wav)
        pcm = read_wav_pcm16(self.source_wav)  # validates 8 kHz mono S16
        pad_ms = max(0, int((duration + 3.0 - info.seconds) * 1000))
        wav = write_wav_pcm16(self.workdir / "source.wav", pcm + silence_pcm16(pad_ms))
        render_template(
            TEMPLATE_DIR / "config.in",
            self.config_dir / "config",
            {
                "SIP_PORT": self.sip_port,
                "WAV": wav,
                "RTP_PORTS": f"{self.rtp_port}-{self.rtp_port + 3}",
                "REC_DIR": self.rec_dir,
            },
        )
        render_template(
            TEMPLATE_DIR / "accounts.in", self.config_dir / "accounts",
            {"ACCOUNT": self.account_line()},
        )  # fmt: skip
        return wav

    async def call(
        self, uri: str, *, duration: float = 5.0, timeout: float | None = None
    ) -> BaresipResult:
        """Dial ``uri``, stay ``duration`` s (rounded up), quit; collect the recordings."""
        seconds = max(1, math.ceil(duration))
        self.prepare(seconds)
        args = [which("baresip"), "-f", str(self.config_dir), "-e", f"/dial {uri}",
                "-t", str(seconds)]  # fmt: skip
        started = time.monotonic()
        proc = await start_process(args, cwd=self.workdir)
        out, err, timed_out = await communicate_with_timeout(
            proc, timeout if timeout is not None else seconds + 10.0, sig=signal.SIGTERM
        )
        (self.workdir / "baresip.log").write_bytes(out + err)
        return BaresipResult(
            args=args,
            returncode=proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=time.monotonic() - started,
            timed_out=timed_out,
            files={"config": self.config_dir / "config", "accounts": self.config_dir / "accounts"},
            recordings=sorted(self.rec_dir.glob("dump-*-dec.wav")),
            sent=sorted(self.rec_dir.glob("dump-*-enc.wav")),
            config_dir=self.config_dir,
        )


async def baresip_call(
    workdir: Path,
    uri: str,
    wav: Path,
    *,
    duration: float = 5.0,
    registrar: str | None = None,
    user: str = "caller",
    password: str = "callerpw",
    outbound_proxy: str | None = None,
    codecs: str = "PCMU",
    timeout: float | None = None,
) -> BaresipResult:
    """Place one call from a fresh baresip (registering as ``user`` at ``registrar`` —
    "host:port" — if given, else without a registrar) and return what it recorded."""
    phone = Baresip(
        workdir, wav, registrar=registrar, user=user, password=password,
        outbound_proxy=outbound_proxy, codecs=codecs,
    )  # fmt: skip
    return await phone.call(uri, duration=duration, timeout=timeout)
