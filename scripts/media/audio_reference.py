#!/usr/bin/env python3
"""Fixtures of the audio encoder (crates/media/src/audio.rs) and their reference vectors.

    PY=$(scripts/media-venv.sh) && "$PY" scripts/media/audio_reference.py

Synthesises speech with Debian's espeak-ng (apt-get install espeak-ng flac vorbis-tools
lame sox), in several voices, writes the clips to crates/media/tests/fixtures/audio/ and,
for each clip, the 256-d embedding of Resemblyzer itself:

    VoiceEncoder("cpu").embed_utterance(preprocess_wav(path))

to crates/media/tests/fixtures/audio/reference.json, with the clip's voice label and
duration. Two sets:

* fidelity clips (`fid_*`): WAV at espeak's native 22,050 Hz (so the resampler is
  exercised), the same speech as FLAC, Ogg Vorbis and MP3, 8-bit, stereo, 16 kHz and
  44.1 kHz variants, a long clip of several partials, plus silence and white noise;
* the voice-search set (`vs_*`): VOICES distinct synthetic voices x UTTERANCES different
  sentences each, as Ogg Vorbis (small), for the same-voice ranking test.

Deterministic: espeak-ng, sox, flac, oggenc and lame are run with fixed settings and the
noise has a fixed seed; rerunning rewrites the same files (given the same tool versions).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

warnings.filterwarnings("ignore")  # pkg_resources / librosa deprecation notices

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/media/tests/fixtures/audio"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
    "She sells sea shells by the sea shore every single summer morning.",
    "Search engines index documents so that people can find them quickly.",
    "The weather tomorrow will be cloudy with a chance of light rain.",
    "Seven silver swans swam across the lake.",
    "Every kernel bundle carries its own vectors and its own metadata.",
]

# Fidelity clips: (name, espeak voice, words/minute, pitch 0-99, sentence index).
FIDELITY = [
    ("fid_en_m3", "en+m3", 165, 50, 0),
    ("fid_en_f2", "en+f2", 170, 60, 1),
    ("fid_en_us_klatt", "en-us+klatt", 160, 45, 2),
    ("fid_en_m1_slow", "en+m1", 120, 40, 3),
    ("fid_en_f4_fast", "en+f4", 230, 70, 4),
    ("fid_en_croak", "en+croak", 150, 35, 5),
    ("fid_en_gb_m7", "en-gb+m7", 175, 55, 6),
    ("fid_en_us_klatt3", "en-us+klatt3", 150, 50, 7),
    ("fid_de_m2", "de+m2", 160, 50, None),
    ("fid_fr_f1", "fr+f1", 165, 65, None),
    ("fid_es_m4", "es+m4", 170, 45, None),
    ("fid_it_f5", "it+f5", 160, 70, None),
    ("fid_nl_m6", "nl+m6", 150, 40, None),
]
FOREIGN = {
    "de+m2": "Der schnelle braune Fuchs springt heute über den faulen Hund im Garten.",
    "fr+f1": "Le petit chat dort tranquillement sur le canapé du salon depuis midi.",
    "es+m4": "El tren de la mañana llega a la estación central a las ocho en punto.",
    "it+f5": "La cena è pronta e tutti gli amici aspettano in giardino con allegria.",
    "nl+m6": "De fiets staat achter het huis naast de oude boom in de tuin.",
}

# Voice-search set: distinct voices (espeak voice + pitch), each saying UTTERANCES sentences.
VOICES = [
    ("m1", "en+m1", 35),
    ("m3", "en+m3", 50),
    ("m7", "en+m7", 60),
    ("f1", "en+f1", 65),
    ("f3", "en+f3", 75),
    ("f5", "en+f5", 55),
    ("klatt", "en-us+klatt", 45),
    ("klatt4", "en-us+klatt4", 70),
    ("croak", "en+croak", 40),
    ("gb_m4", "en-gb-scotland+m4", 30),
    ("us_f2", "en-us+f2", 85),
    ("klatt2", "en-us+klatt2", 20),
]
UTTERANCES = 4


def run(*cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def espeak(path, voice, speed, pitch, text):
    run("espeak-ng", "-v", voice, "-s", speed, "-p", pitch, "-w", path, text)


def main():
    for tool in ("espeak-ng", "sox", "flac", "oggenc", "lame"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install espeak-ng sox flac vorbis-tools lame")
    from resemblyzer import VoiceEncoder, preprocess_wav

    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.suffix in (".wav", ".flac", ".ogg", ".mp3"):
            old.unlink()
    clips = []  # (file name, voice label, set)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, voice, speed, pitch, idx in FIDELITY:
            text = SENTENCES[idx] if idx is not None else FOREIGN[voice]
            espeak(OUT / f"{name}.wav", voice, speed, pitch, text)
            clips.append((f"{name}.wav", voice, "fidelity"))

        # A long clip (several partials, and pauses the VAD trims): three sentences.
        long_raw = tmp / "long.wav"
        espeak(long_raw, "en+m2", 160, 50, " ... ".join(SENTENCES[:3]))
        run("flac", "--best", "-s", "-f", "-o", OUT / "fid_long_m2.flac", long_raw)
        clips.append(("fid_long_m2.flac", "en+m2", "fidelity"))

        # The same speech in other containers and codecs.
        src = tmp / "src.wav"
        espeak(src, "en+m5", 160, 50, SENTENCES[4])
        run("flac", "--best", "-s", "-f", "-o", OUT / "fid_fmt_m5.flac", src)
        run("oggenc", "-Q", "-q", "4", "--serial", "1", "-o", OUT / "fid_fmt_m5.ogg", src)
        run("lame", "--quiet", "-b", "64", "--noreplaygain", src, OUT / "fid_fmt_m5.mp3")
        clips += [(f"fid_fmt_m5.{e}", "en+m5", "fidelity") for e in ("flac", "ogg", "mp3")]
        src2 = tmp / "src2.wav"
        espeak(src2, "en+f3", 175, 60, SENTENCES[5])
        run("oggenc", "-Q", "-q", "2", "--serial", "2", "-o", OUT / "fid_fmt_f3.ogg", src2)
        run("lame", "--quiet", "-V", "4", "--noreplaygain", src2, OUT / "fid_fmt_f3.mp3")
        clips += [(f"fid_fmt_f3.{e}", "en+f3", "fidelity") for e in ("ogg", "mp3")]

        # Sample formats and rates (sox, no dither so the output is deterministic).
        src3 = tmp / "src3.wav"
        espeak(src3, "en+m4", 165, 45, SENTENCES[6])
        run("sox", "-D", src3, "-b", "8", "-e", "unsigned-integer", OUT / "fid_u8_m4.wav")
        run("sox", "-D", src3, "-r", "16000", OUT / "fid_16k_m4.wav")
        run("sox", "-D", src3, "-r", "44100", OUT / "fid_44k_m4.flac")
        run("sox", "-D", src3, "-r", "8000", OUT / "fid_8k_m4.flac")
        run("sox", "-D", src3, "-r", "48000", "-b", "24", OUT / "fid_48k24_m4.flac")
        clips += [(n, "en+m4", "fidelity") for n in
                  ("fid_u8_m4.wav", "fid_16k_m4.wav", "fid_44k_m4.flac", "fid_8k_m4.flac", "fid_48k24_m4.flac")]
        # Stereo: the voice on the left, the same voice quieter and 3 ms late on the right.
        mono, sr = sf.read(src3, dtype="int16")
        right = np.concatenate([np.zeros(int(sr * 0.003), np.int16), (mono[: len(mono) - int(sr * 0.003)] // 2)])
        sf.write(OUT / "fid_stereo_m4.wav", np.stack([mono, right], axis=1), sr, subtype="PCM_16")
        # Float samples.
        sf.write(OUT / "fid_f32_m4.wav", mono.astype(np.float32) / 32768.0 * 0.5, sr, subtype="FLOAT")
        clips += [(n, "en+m4", "fidelity") for n in ("fid_stereo_m4.wav", "fid_f32_m4.wav")]

        # Silence and white noise (seeded).
        sf.write(OUT / "fid_silence.wav", np.zeros(2 * 16000, np.int16), 16000, subtype="PCM_16")
        rng = np.random.default_rng(20240611)
        noise = np.clip(rng.normal(0.0, 0.1, 2 * 22050), -1.0, 1.0)
        sf.write(OUT / "fid_noise.wav", noise, 22050, subtype="PCM_16")
        clips += [("fid_silence.wav", "silence", "fidelity"), ("fid_noise.wav", "noise", "fidelity")]

        # Voice-search set.
        for label, voice, pitch in VOICES:
            for u in range(UTTERANCES):
                text = SENTENCES[(u * 2 + len(label)) % len(SENTENCES)]
                raw = tmp / f"{label}_{u}.wav"
                espeak(raw, voice, 165, pitch, text)
                name = f"vs_{label}_{u}.ogg"
                run("oggenc", "-Q", "-q", "1", "--serial", str(100 + u), "-o", OUT / name, raw)
                clips.append((name, label, "voice_search"))

    encoder = VoiceEncoder("cpu", verbose=False)
    records = []
    for name, label, kind in clips:
        path = OUT / name
        info = sf.info(path)
        with np.errstate(all="ignore"):
            wav = preprocess_wav(path)
            embed = encoder.embed_utterance(wav)
        if not np.all(np.isfinite(embed)):
            sys.exit(f"{name}: the reference embedding is not finite")
        records.append({
            "file": name,
            "set": kind,
            "voice": label,
            "duration_secs": round(info.frames / info.samplerate, 6),
            "sample_rate": info.samplerate,
            "channels": info.channels,
            "preprocessed_samples": int(len(wav)),
            "embedding": [float(f"{x:.8g}") for x in embed],
        })
        print(f"{name:28} {label:14} {info.frames / info.samplerate:6.2f} s -> {len(wav) / 16000:6.2f} s", file=sys.stderr)
    doc = {
        "generator": "scripts/media/audio_reference.py",
        "model": "resemblyzer 0.1.4 (VoiceEncoder, pretrained.pt)",
        "call": "VoiceEncoder('cpu').embed_utterance(preprocess_wav(path))",
        "clips": records,
    }
    (OUT / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(records)} clips, {total / 1e6:.2f} MB in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
