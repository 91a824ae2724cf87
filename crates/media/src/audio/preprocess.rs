//! Resemblyzer's `preprocess_wav` after loading: resampling to 16 kHz, volume
//! normalisation and the trimming of long silences by WebRTC's voice activity detector.

use crate::error::{Error, Result};
use rubato::{Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction};
use webrtc_vad::{SampleRate, Vad, VadMode};

/// The model's sample rate (Hz).
pub(crate) const SAMPLE_RATE: u32 = 16_000;

/// `audio_norm_target_dBFS`.
const TARGET_DBFS: f64 = -30.0;

/// `int16_max`: the scale of the 16-bit PCM the VAD reads.
const INT16_MAX: f32 = 32_767.0;

/// `vad_window_length` (30 ms) in samples at 16 kHz.
pub(crate) const VAD_WINDOW: usize = 480;

/// `vad_moving_average_width`.
const VAD_AVERAGE_WIDTH: usize = 8;

/// `vad_max_silence_length`: the dilation structure is this + 1 windows wide.
const VAD_MAX_SILENCE: usize = 6;

/// Length of the windowed-sinc filter, in input samples.
///
/// librosa resamples with soxr's "HQ" preset: linear phase, pass band flat to 91.3 % of
/// the lower Nyquist frequency, stop band from 100 %, about 120 dB down. A Blackman-Harris²
/// windowed sinc of 448 taps has its transition band that wide; its cutoff (the -6 dB point)
/// sits in the middle of soxr's transition band.
const SINC_LEN: usize = 448;

/// Cutoff of the sinc filter relative to the lower Nyquist frequency (see [`SINC_LEN`]).
const SINC_CUTOFF: f32 = 0.9565;

/// Input frames per call to the resampler.
const RESAMPLE_CHUNK: usize = 8_192;

/// Largest exact oversampling table: when the output positions fall on at most this many
/// distinct sub-sample phases (16 kHz / gcd(rate, 16 kHz): 320 for 22.05 kHz, 160 for 44.1 kHz,
/// 1 for 48 kHz), every phase gets its own filter and no interpolation between filters is
/// needed; otherwise 256 phases with cubic interpolation between them.
const MAX_EXACT_PHASES: usize = 2_048;

/// `librosa.resample(wav, orig_sr=rate, target_sr=16000)` (soxr HQ), output length
/// `ceil(len * 16000 / rate)`; the samples unchanged when the rate already is 16 kHz.
pub(crate) fn resample(wav: &[f32], rate: u32) -> Result<Vec<f32>> {
    if rate == SAMPLE_RATE {
        return Ok(wav.to_vec());
    }
    let ratio = f64::from(SAMPLE_RATE) / f64::from(rate);
    let wanted = (wav.len() as u64 * u64::from(SAMPLE_RATE)).div_ceil(u64::from(rate));
    let wanted = usize::try_from(wanted).map_err(|_| Error::input("audio too long"))?;
    let phases = (SAMPLE_RATE / gcd(SAMPLE_RATE, rate)) as usize;
    let exact = phases <= MAX_EXACT_PHASES;
    let (oversampling_factor, interpolation) =
        if exact { (phases, SincInterpolationType::Nearest) } else { (256, SincInterpolationType::Cubic) };
    let params = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: SINC_CUTOFF,
        oversampling_factor,
        interpolation,
        window: WindowFunction::BlackmanHarris2,
    };
    let resampler_error = |e: &dyn std::fmt::Display| Error::input(format!("cannot resample from {rate} Hz: {e}"));
    // Building the filter bank (sinc_len × phases windowed sincs) costs as much as
    // resampling seconds of audio: resamplers are reused, reset, per source rate.
    let mut resampler = match take_resampler(rate) {
        Some(r) => r,
        None => SincFixedIn::<f32>::new(ratio, 1.0, params, RESAMPLE_CHUNK, 1).map_err(|e| resampler_error(&e))?,
    };
    let out = run_resampler(&mut resampler, wav, rate, wanted, oversampling_factor, exact);
    give_resampler(rate, resampler);
    out
}

/// Resamplers kept for reuse: (source rate, resampler), at most [`POOL_MAX`].
static POOL: std::sync::Mutex<Vec<(u32, SincFixedIn<f32>)>> = std::sync::Mutex::new(Vec::new());
/// Resamplers kept (a few per rate for parallel batches; each holds its filter bank).
const POOL_MAX: usize = 16;

fn take_resampler(rate: u32) -> Option<SincFixedIn<f32>> {
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = pool.iter().position(|(r, _)| *r == rate)?;
    let (_, mut resampler) = pool.swap_remove(i);
    resampler.reset();
    Some(resampler)
}

fn give_resampler(rate: u32, resampler: SincFixedIn<f32>) {
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() >= POOL_MAX {
        pool.remove(0);
    }
    pool.push((rate, resampler));
}

fn run_resampler(
    resampler: &mut SincFixedIn<f32>,
    wav: &[f32],
    rate: u32,
    wanted: usize,
    oversampling_factor: usize,
    exact: bool,
) -> Result<Vec<f32>> {
    let resampler_error = |e: &dyn std::fmt::Display| Error::input(format!("cannot resample from {rate} Hz: {e}"));
    let (lead_in, skip) = alignment(rate, oversampling_factor, exact);
    let mut out: Vec<f32> = Vec::with_capacity(wanted + skip + RESAMPLE_CHUNK);
    let mut output = resampler.output_buffer_allocate(true);
    let mut input = vec![0f32; RESAMPLE_CHUNK];
    // The input stream: `lead_in` zeros, then the audio.
    let total = lead_in + wav.len();
    let mut pos = 0;
    while out.len() < wanted + skip {
        let (_, written) = if pos < total {
            let n = RESAMPLE_CHUNK.min(total - pos);
            for (k, x) in input[..n].iter_mut().enumerate() {
                *x = (pos + k).checked_sub(lead_in).map_or(0.0, |i| wav[i]);
            }
            pos += n;
            if n == RESAMPLE_CHUNK {
                resampler.process_into_buffer(&[&input[..]], &mut output, None)
            } else {
                resampler.process_partial_into_buffer(Some(&[&input[..n]]), &mut output, None)
            }
        } else {
            resampler.process_partial_into_buffer(None::<&[&[f32]]>, &mut output, None)
        }
        .map_err(|e| resampler_error(&e))?;
        if written == 0 && pos >= total {
            break;
        }
        out.extend_from_slice(&output[0][..written]);
    }
    out.drain(..skip.min(out.len()));
    out.resize(wanted, 0.0);
    Ok(out)
}

/// How many zeros to feed before the audio and how many output samples to drop so that
/// output sample `n` lies exactly at input time `n · rate / 16000`, as soxr's does.
///
/// Rubato's `SincFixedIn` puts output `n` at input time `n / r + (1/r - 1 + 1/phases)`
/// (`r` = 16000 / rate): its filter bank is offset by one sub-sample step. With `r = P/Q`
/// in lowest terms and `P` exact phases, feeding `m` zeros first and dropping `j` outputs
/// cancels that offset exactly when `(m + 1) · P ≡ 1 (mod Q)`, `j = ((m + 1) · P - 1) / Q - 1`.
/// With interpolated phases only the whole-sample part can be cancelled (the residue is
/// below one input sample).
fn alignment(rate: u32, phases: usize, exact: bool) -> (usize, usize) {
    let g = gcd(SAMPLE_RATE, rate);
    let (p, q) = (u64::from(SAMPLE_RATE / g), u64::from(rate / g));
    if exact {
        for k in 1..=(2 * q + 2) {
            if (k * p) % q == 1 % q && k * p > q {
                return ((k - 1) as usize, ((k * p - 1) / q - 1) as usize);
            }
        }
    }
    let r = p as f64 / q as f64;
    let offset = 1.0 / r - 1.0 + 1.0 / phases as f64;
    let lead_in = offset.max(0.0).ceil();
    (lead_in as usize, ((lead_in - offset) * r).round() as usize)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `normalize_volume(wav, -30, increase_only=True)`: scales the audio up to an RMS of
/// -30 dBFS; louder audio is left as it is.
///
/// All-zero audio has no level: the reference divides by zero there (its output is NaN,
/// which its VAD then trims away entirely); here it is left unscaled, and the VAD trims it
/// the same way.
pub(crate) fn normalize_volume(wav: &mut [f32]) {
    if wav.is_empty() {
        return;
    }
    let scale = f64::from(INT16_MAX);
    let mean_square = wav.iter().map(|&x| (f64::from(x) * scale).powi(2)).sum::<f64>() / wav.len() as f64;
    let rms = mean_square.sqrt();
    if rms <= 0.0 || !rms.is_finite() {
        return;
    }
    let change = TARGET_DBFS - 20.0 * (rms / scale).log10();
    if change < 0.0 {
        return;
    }
    let gain = 10f64.powf(change / 20.0) as f32;
    for x in wav {
        *x *= gain;
    }
}

/// `trim_long_silences`: cuts the audio to whole 30 ms windows, asks WebRTC's VAD (mode 3,
/// "very aggressive") about each, smooths the flags with a moving average of 8 windows,
/// dilates the voiced regions by 6 windows on each side and keeps the voiced windows.
pub(crate) fn trim_long_silences(wav: &[f32]) -> Vec<f32> {
    let windows = wav.len() / VAD_WINDOW;
    if windows == 0 {
        return Vec::new();
    }
    let mut vad = Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, VadMode::VeryAggressive);
    let mut pcm = vec![0i16; VAD_WINDOW];
    let flags: Vec<bool> = wav[..windows * VAD_WINDOW]
        .chunks_exact(VAD_WINDOW)
        .map(|window| {
            for (p, &x) in pcm.iter_mut().zip(window) {
                *p = to_int16(x);
            }
            // A 30 ms frame at 16 kHz is always a valid length; an error would mean "no
            // decision", which the reference cannot produce either.
            vad.is_voice_segment(&pcm).unwrap_or(false)
        })
        .collect();
    let mask = voiced_mask(&flags);
    let mut out = Vec::with_capacity(windows * VAD_WINDOW);
    for (window, keep) in wav.chunks_exact(VAD_WINDOW).zip(&mask) {
        if *keep {
            out.extend_from_slice(window);
        }
    }
    out
}

/// `np.round(x * 32767).astype(np.int16)`: round half to even, then the C conversion
/// numpy uses on x86-64 (to 32 bits, keeping the low 16: out-of-range values wrap and NaN
/// becomes 0, as Rust's saturating `as i32` gives for all values the audio can hold).
fn to_int16(x: f32) -> i16 {
    let v = (x * INT16_MAX).round_ties_even();
    (v as i32) as i16
}

/// The moving average (`round(mean) == 1`, ties to even, so at least 5 of the 8 windows
/// `i-3..=i+4`, zeros outside) then the binary dilation by 7 windows (`i-3..=i+3`).
fn voiced_mask(flags: &[bool]) -> Vec<bool> {
    let n = flags.len();
    let before = (VAD_AVERAGE_WIDTH - 1) / 2;
    let after = VAD_AVERAGE_WIDTH / 2;
    let smoothed: Vec<bool> = (0..n)
        .map(|i| {
            let lo = i.saturating_sub(before);
            let hi = (i + after + 1).min(n);
            let voiced = flags[lo..hi].iter().filter(|&&f| f).count();
            // round(voiced / 8) with ties to even: 4/8 = 0.5 rounds to 0.
            2 * voiced > VAD_AVERAGE_WIDTH
        })
        .collect();
    let reach = VAD_MAX_SILENCE / 2;
    (0..n)
        .map(|i| {
            let lo = i.saturating_sub(reach);
            let hi = (i + reach + 1).min(n);
            smoothed[lo..hi].iter().any(|&v| v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_follows_the_reference_arithmetic() {
        // One voiced window is smoothed away; five in a row survive and are dilated by 3.
        let mut flags = vec![false; 30];
        flags[3] = true;
        assert!(voiced_mask(&flags).iter().all(|&m| !m));
        for f in &mut flags[10..15] {
            *f = true;
        }
        let mask = voiced_mask(&flags);
        let kept: Vec<usize> = (0..30).filter(|&i| mask[i]).collect();
        // Smoothed true where at least 5 of i-3..=i+4 are voiced (i = 10..=13), then
        // dilated by 3: the indices numpy/scipy give for the same flags.
        assert_eq!(kept, (7..=16).collect::<Vec<_>>());
        let mut flags = vec![false; 30];
        for i in [3, 5, 6, 7, 8] {
            flags[i] = true;
        }
        let mask = voiced_mask(&flags);
        assert_eq!((0..30).filter(|&i| mask[i]).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn int16_conversion_rounds_half_to_even() {
        assert_eq!(to_int16(0.5 / 32_767.0), 0);
        assert_eq!(to_int16(1.5 / 32_767.0), 2);
        assert_eq!(to_int16(-1.0), -32_767);
        assert_eq!(to_int16(f32::NAN), 0);
    }

    #[test]
    fn resampling_is_aligned() {
        // An impulse lands where it belongs, symmetric around it (linear phase, no delay).
        for rate in [22_050u32, 44_100, 8_000, 48_000, 11_025] {
            let mut x = vec![0f32; rate as usize];
            x[rate as usize / 5] = 1.0;
            let out = resample(&x, rate).unwrap();
            assert_eq!(out.len(), 16_000);
            // rate / 5 input samples = 3,200 output samples exactly.
            let peak = (0..out.len()).max_by(|&a, &b| out[a].total_cmp(&out[b])).unwrap();
            assert_eq!(peak, 3_200, "{rate} Hz");
            for d in 1..50 {
                assert!((out[3_200 - d] - out[3_200 + d]).abs() < 1e-6, "{rate} Hz: asymmetric at ±{d}");
            }
        }
    }

    #[test]
    fn resampled_length_and_tone() {
        let rate = 22_050u32;
        let tone: Vec<f32> = (0..rate as usize)
            .map(|i| (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin() as f32 * 0.5)
            .collect();
        let out = resample(&tone, rate).unwrap();
        assert_eq!(out.len(), 16_000);
        // Away from the edges the output is the same tone at 16 kHz.
        let err = (1_000..15_000)
            .map(|i| {
                let want = (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin() * 0.5;
                (f64::from(out[i]) - want).abs()
            })
            .fold(0.0, f64::max);
        assert!(err < 1e-3, "max error {err}");
    }

    #[test]
    fn quiet_audio_is_raised_to_minus_30_dbfs() {
        let mut wav = vec![0.001f32; 1000];
        normalize_volume(&mut wav);
        let rms = (wav.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!((20.0 * rms.log10() + 30.0).abs() < 1e-3);
        let mut loud = vec![0.5f32; 10];
        normalize_volume(&mut loud);
        assert_eq!(loud[0], 0.5);
    }
}
