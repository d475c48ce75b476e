"""A talk-off corpus: synthetic telephone speech from Debian's espeak-ng.

Many voices (male and female variants), languages, speeds and pitches speak phone-call
phrases, digit strings and card-number-like sequences. Each clip is synthesised to WAV,
resampled from espeak's 22050 Hz to 8 kHz with an FFT low-pass (telephone band, 200-3400 Hz),
set to a telephone level (-12..-25 dBm0 active speech level, some loud ones near -6 dBm0), and
the clips are joined by short pauses; light line noise runs underneath throughout.

The result is cached under ``.cache/talkoff/`` keyed by a hash of every generation parameter,
so reruns load in milliseconds. ``talkoff_corpus(minutes)`` is the entry point.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dtmfmask.tones import SAMPLE_RATE, dbm0_to_amplitude

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "talkoff"
GENERATOR_VERSION = 1  # bump when the synthesis below changes

ESPEAK = "espeak-ng"
DEBIAN_PACKAGE = "espeak-ng"


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed (tests skip on this, except under CI)."""


def espeak_path() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise SpeechUnavailable(
            f"{ESPEAK} not found on PATH: install the Debian package "
            f"'{DEBIAN_PACKAGE}' (apt-get install -y {DEBIAN_PACKAGE})"
        )
    return path


# --------------------------------------------------------------------------------------------
# What gets said, by whom

_EN = [
    "Hello, thank you for calling, my name is Sarah, how can I help you today?",
    "I'd like to pay my bill please, the account number is 4 7 1 9 2 2 0 3.",
    "My card number is 4111 1111 1111 1111, expiry oh nine twenty seven.",
    "The long number on the front is 5500 0000 0000 0004.",
    "Three seven eight two, eight two two four, six three one, zero zero five.",
    "Can you hear me? Sorry, the line is really bad, could you repeat that?",
    "The security code on the back is seven three one.",
    "Please hold while I transfer you to the payments team.",
    "Your reference number is one nine eight seven six five four three two one.",
    "Okay, that's zero two zero seven nine four six zero eight eight one.",
    "Yes. No. Maybe. Hmm, let me just find my purse, hang on a second.",
    "Press one for sales, press two for support, or stay on the line.",
    "My postcode is S W one A, two A A, and my date of birth is the fourth of July.",
    "Is that six six six or nine nine nine? I said eight, eight, eight.",
    "Four five six, seven eight nine, zero one two three, four five six seven.",
    "Right, so the total comes to one hundred and forty nine pounds ninety nine.",
    "Wonderful, the payment went through, is there anything else I can help with?",
    "Oh dear, it says declined, shall we try another card?",
]
_DIGITS = "0 1 2 3 4 5 6 7 8 9 4111 1111 1111 1111 5105 1051 0510 5100 3782 822463 10005"
_TEXTS: dict[str, list[str]] = {
    "en": _EN,
    "en-us": _EN,
    "de": [
        "Guten Tag, vielen Dank für Ihren Anruf. Wie kann ich Ihnen helfen?",
        "Meine Kartennummer ist 4111 1111 1111 1111, gültig bis neun siebenundzwanzig.",
        "Einen Moment bitte, ich verbinde Sie mit der Buchhaltung.",
        "Die Prüfziffer ist sieben drei eins. Null acht neun, vier fünf sechs.",
    ],
    "fr-fr": [
        "Bonjour, merci de votre appel, que puis-je faire pour vous?",
        "Mon numéro de carte est 4970 1012 3456 7890, date d'expiration douze vingt-six.",
        "Pouvez-vous répéter s'il vous plaît? La ligne est mauvaise.",
        "Le code est trois, sept, un. Zéro six douze trente-quatre cinquante-six.",
    ],
    "es": [
        "Buenos días, gracias por llamar, ¿en qué puedo ayudarle?",
        "El número de mi tarjeta es 4111 1111 1111 1111, caduca en nueve veintisiete.",
        "Un momento por favor, le paso con el departamento de pagos.",
        "Cero, uno, dos, tres, cuatro, cinco, seis, siete, ocho, nueve.",
    ],
    "it": [
        "Buongiorno, grazie per aver chiamato, come posso aiutarla?",
        "Il numero della carta è 5500 0000 0000 0004, scadenza zero nove ventisette.",
        "Attenda in linea, la passo all'ufficio pagamenti.",
    ],
    "pt": [
        "Bom dia, obrigado por ligar, em que posso ajudar?",
        "O número do meu cartão é 4111 1111 1111 1111, validade nove vinte e sete.",
        "Um momento por favor, vou transferir a chamada.",
    ],
    "nl": [
        "Goedemiddag, bedankt voor uw telefoontje, waarmee kan ik u helpen?",
        "Mijn kaartnummer is 4111 1111 1111 1111, geldig tot negen zevenentwintig.",
    ],
    "pl": [
        "Dzień dobry, dziękuję za telefon, w czym mogę pomóc?",
        "Numer mojej karty to 4111 1111 1111 1111, ważna do września dwadzieścia siedem.",
    ],
    "sv": [
        "Hej, tack för att du ringer, hur kan jag hjälpa dig?",
        "Mitt kortnummer är 4111 1111 1111 1111, giltigt till nio tjugosju.",
    ],
    "ru": [
        "Здравствуйте, спасибо за звонок, чем я могу помочь?",
        "Номер моей карты 4111 1111 1111 1111, срок действия девять двадцать семь.",
    ],
    "hi": [
        "नमस्ते, कॉल करने के लिए धन्यवाद, मैं आपकी क्या मदद कर सकता हूँ?",
        "मेरा कार्ड नंबर 4111 1111 1111 1111 है।",
    ],
    "cmn": [
        "您好，感谢您的来电，请问有什么可以帮您？",
        "我的卡号是 4111 1111 1111 1111，有效期到二七年九月。",
    ],
}
_MALE = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "max", "paul"]
_FEMALE = ["f1", "f2", "f3", "f4", "f5", "klatt4", "linda", "belinda", "anika", "aunty"]


@dataclass(frozen=True, slots=True)
class Utterance:
    """One espeak-ng invocation and how its clip is levelled."""

    voice: str  # "en+f2"
    text: str
    speed_wpm: int
    pitch: int
    level_dbm0: float  # active speech level
    pause_ms: int  # pause after it


def plan_utterances(minutes: float, seed: int = 0) -> list[Utterance]:
    """A deterministic plan long enough for ``minutes`` (estimated at ~5 s per utterance,
    trimmed when joined)."""
    gen = np.random.default_rng(seed)
    langs = sorted(_TEXTS)
    # about 3.5 s of speech per utterance on average, plus the pause
    n = max(1, int(minutes * 60.0 / 3.5) + 4)
    out: list[Utterance] = []
    for i in range(n):
        lang = langs[i % len(langs)] if gen.random() < 0.5 else "en"
        if gen.random() < 0.2:
            text = " ".join(gen.choice(_DIGITS.split(), int(gen.integers(3, 9))))
        else:
            texts = _TEXTS[lang]
            text = texts[int(gen.integers(0, len(texts)))]
        variant = str(gen.choice(_FEMALE if gen.random() < 0.5 else _MALE))
        loud = gen.random() < 0.1
        out.append(
            Utterance(
                voice=f"{lang}+{variant}",
                text=text,
                speed_wpm=int(gen.integers(120, 221)),
                pitch=int(gen.integers(20, 91)),
                level_dbm0=float(gen.uniform(-8.0, -5.0) if loud else gen.uniform(-25.0, -12.0)),
                pause_ms=int(gen.integers(100, 900)),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Synthesis and conditioning


def _synthesise(espeak: str, u: Utterance) -> tuple[npt.NDArray[np.float64], int]:
    proc = subprocess.run(
        [espeak, "-v", u.voice, "-s", str(u.speed_wpm), "-p", str(u.pitch), "--stdout", u.text],
        capture_output=True,
        check=True,
        timeout=60,
    )
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"unexpected espeak-ng output format for {u.voice}")
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float64), rate


def resample_to_8k(x: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """FFT resampling of a whole clip to 8 kHz with a telephone-band filter: a raised-cosine
    high-pass 150-250 Hz and low-pass 3300-3700 Hz (well below the new Nyquist, so no
    aliasing)."""
    n_out = round(len(x) * SAMPLE_RATE / rate)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    gain = np.ones_like(f)
    gain = np.where(f < 150.0, 0.0, gain)
    hp = (f >= 150.0) & (f < 250.0)
    gain[hp] = 0.5 - 0.5 * np.cos(np.pi * (f[hp] - 150.0) / 100.0)
    lp = (f > 3300.0) & (f <= 3700.0)
    gain[lp] = 0.5 + 0.5 * np.cos(np.pi * (f[lp] - 3300.0) / 400.0)
    gain[f > 3700.0] = 0.0
    keep = n_out // 2 + 1
    out_spec = np.zeros(keep, dtype=complex)
    m = min(keep, len(spec))
    out_spec[:m] = (spec * gain)[:m]
    out: npt.NDArray[np.float64] = np.fft.irfft(out_spec, n_out) * (n_out / len(x))
    return out


def active_level_dbm0(x: npt.NDArray[np.float64]) -> float:
    """Rough active speech level: mean power of the 20 ms frames within 35 dB of the
    loudest, in dBm0 (cf. ITU-T P.56, simplified)."""
    frame = SAMPLE_RATE // 50
    n = len(x) // frame
    if n == 0:
        return -120.0
    p = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = p[p >= p.max() * 10 ** (-35 / 10)]
    # 0 dBm0 sine has mean square A^2/2
    return float(10 * np.log10(active.mean() / (dbm0_to_amplitude(0.0) ** 2 / 2) + 1e-30))


def _trim(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Drop leading and trailing near-silence (espeak pads clips)."""
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * 0.01) if x.size else np.zeros(0, int)
    if loud.size == 0:
        return x[:0]
    return x[max(0, loud[0] - 80) : loud[-1] + 80]


def _clip_8k(espeak: str, u: Utterance) -> npt.NDArray[np.float64]:
    raw, rate = _synthesise(espeak, u)
    x = _trim(resample_to_8k(raw, rate))
    if x.size == 0:
        return x
    gain = 10 ** ((u.level_dbm0 - active_level_dbm0(x)) / 20)
    return np.concatenate([x * gain, np.zeros(u.pause_ms * SAMPLE_RATE // 1000)])


def _cache_key(minutes: float, seed: int, noise_dbm0: float, plan: list[Utterance]) -> str:
    espeak = espeak_path()
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout
    params = {
        "generator": GENERATOR_VERSION,
        "minutes": minutes,
        "seed": seed,
        "noise_dbm0": noise_dbm0,
        "espeak": version.strip(),
        "plan": [asdict(u) for u in plan],
    }
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def talkoff_corpus(
    minutes: float = 30.0,
    *,
    seed: int = 0,
    noise_dbm0: float = -65.0,
    workers: int | None = None,
    cache_dir: Path | None = CACHE_DIR,
) -> npt.NDArray[np.int16]:
    """``minutes`` of 8 kHz telephone speech as int16 (no key presses in it).

    Raises ``SpeechUnavailable`` when espeak-ng is missing. Cached under ``cache_dir``
    (None disables the cache). ``workers`` espeak-ng processes run at once (default: CPUs).
    """
    espeak = espeak_path()
    plan = plan_utterances(minutes, seed)
    path = None
    if cache_dir is not None:
        path = cache_dir / f"talkoff-{_cache_key(minutes, seed, noise_dbm0, plan)}.npy"
        if path.exists():
            cached: npt.NDArray[np.int16] = np.load(path)
            return cached
    total = int(minutes * 60 * SAMPLE_RATE)
    pool_size = workers or min(8, os.cpu_count() or 2)
    clips: list[npt.NDArray[np.float64]] = []
    have = 0
    start = 0
    with ThreadPoolExecutor(pool_size) as pool:
        while have < total:
            if start >= len(plan):  # estimate was short: extend the plan deterministically
                plan += plan_utterances(minutes, seed + len(plan))
            batch = plan[start : start + 32]
            start += len(batch)
            for clip in pool.map(lambda u: _clip_8k(espeak, u), batch):
                clips.append(clip)
                have += clip.size
    speech = np.concatenate(clips)[:total]
    gen = np.random.default_rng(seed + 1)
    noise_sigma = dbm0_to_amplitude(noise_dbm0) / np.sqrt(2)
    speech = speech + noise_sigma * gen.standard_normal(total)
    out = np.clip(np.rint(speech), -32768, 32767).astype(np.int16)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out
