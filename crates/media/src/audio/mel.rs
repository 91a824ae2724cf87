//! The voice encoder's front end: where the partial utterances lie
//! (`VoiceEncoder.compute_partial_slices`) and their mel spectrograms
//! (`librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)`:
//! power 2, not logarithmic).

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::sync::Arc;

/// `n_fft`: the 25 ms analysis window at 16 kHz.
pub(crate) const N_FFT: usize = 400;
/// `hop_length`: 10 ms.
pub(crate) const HOP: usize = 160;
/// `mel_n_channels`.
pub(crate) const N_MELS: usize = 40;
/// `partials_n_frames`: frames per partial utterance (1.6 s).
pub(crate) const PARTIAL_FRAMES: usize = 160;
/// Frequency bins of the one-sided spectrum.
const N_BINS: usize = N_FFT / 2 + 1;
/// Partial utterances per second (`rate` of `embed_utterance`).
const PARTIAL_RATE: f64 = 1.3;
/// `min_coverage` of `embed_utterance`.
const MIN_COVERAGE: f64 = 0.75;

/// The first mel frame of every partial utterance and the number of samples the padded
/// waveform must have, for a waveform of `n_samples` samples.
///
/// Mirrors `compute_partial_slices(n_samples, rate=1.3, min_coverage=0.75)`: a partial
/// every `round(16000 / 1.3 / 160) = 77` frames; the last one is dropped when less than
/// 75 % of it is audio, unless it is the only one.
pub(crate) fn partial_starts(n_samples: usize) -> (Vec<usize>, usize) {
    let n_frames = (n_samples + 1).div_ceil(HOP);
    let frame_step =
        ((f64::from(super::preprocess::SAMPLE_RATE) / PARTIAL_RATE) / HOP as f64).round_ties_even() as usize;
    let steps = (n_frames + frame_step + 1).saturating_sub(PARTIAL_FRAMES).max(1);
    let mut starts: Vec<usize> = (0..steps).step_by(frame_step).collect();
    if let Some(&last) = starts.last() {
        let coverage = (n_samples as f64 - (last * HOP) as f64) / (PARTIAL_FRAMES * HOP) as f64;
        if coverage < MIN_COVERAGE && starts.len() > 1 {
            starts.pop();
        }
    }
    let wave_len = starts.last().map_or(0, |&s| (s + PARTIAL_FRAMES) * HOP);
    (starts, wave_len)
}

/// Power spectrogram → mel bands, with the FFT planned once.
pub(crate) struct MelFrontEnd {
    fft: Arc<dyn RealToComplex<f64>>,
    /// Periodic Hann window (`scipy.signal.get_window('hann', 400, fftbins=True)`).
    window: Vec<f64>,
    /// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)`, row-major `[N_MELS][N_BINS]`,
    /// each band as its first non-zero bin and its weights.
    bands: Vec<(usize, Vec<f32>)>,
}

impl MelFrontEnd {
    pub(crate) fn new() -> MelFrontEnd {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let window =
            (0..N_FFT).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()).collect();
        let bands = mel_filters()
            .chunks_exact(N_BINS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        MelFrontEnd { fft, window, bands }
    }

    /// The mel frames `0..n_frames` of `wav` (frame `t` centred on sample `t * 160`, the
    /// waveform padded with zeros on both sides, librosa's `center=True, pad_mode='constant'`),
    /// row-major `[n_frames][N_MELS]`.
    pub(crate) fn frames(&self, wav: &[f32], n_frames: usize) -> Vec<f32> {
        let mut out = vec![0f32; n_frames * N_MELS];
        let mut input = vec![0f64; N_FFT];
        let mut spectrum = vec![Complex::<f64>::new(0.0, 0.0); N_BINS];
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; N_BINS];
        let pad = (N_FFT / 2) as isize;
        for (t, row) in out.chunks_exact_mut(N_MELS).enumerate() {
            let start = (t * HOP) as isize - pad;
            for (j, (x, w)) in input.iter_mut().zip(&self.window).enumerate() {
                let i = start + j as isize;
                let s = if i >= 0 { wav.get(i as usize).copied().unwrap_or(0.0) } else { 0.0 };
                *x = f64::from(s) * w;
            }
            // The lengths are the plan's own, so the transform cannot fail.
            if self.fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch).is_err() {
                continue;
            }
            // librosa stores the STFT as complex64, then |·|² in float32.
            for (p, c) in power.iter_mut().zip(&spectrum) {
                let (re, im) = (c.re as f32, c.im as f32);
                *p = re.hypot(im).powi(2);
            }
            for (m, (first, weights)) in row.iter_mut().zip(&self.bands) {
                *m = weights.iter().zip(&power[*first..]).map(|(w, p)| f64::from(*w) * f64::from(*p)).sum::<f64>()
                    as f32;
            }
        }
        out
    }
}

/// Slaney's mel scale (librosa's default, `htk=False`).
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() / logstep } else { f / f_sp }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel { min_log_hz * (logstep * (m - min_log_mel)).exp() } else { f_sp * m }
}

/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=40, fmin=0, fmax=8000, htk=False,
/// norm='slaney')` in float32, row-major `[N_MELS][N_BINS]`: triangles on the Slaney mel
/// scale, each scaled by 2 / (its width in Hz) so that every band has the same area.
fn mel_filters() -> Vec<f32> {
    let sr = f64::from(super::preprocess::SAMPLE_RATE);
    let (min_mel, max_mel) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> =
        (0..N_MELS + 2).map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (N_MELS + 1) as f64)).collect();
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|k| k as f64 * sr / N_FFT as f64).collect();
    let mut weights = vec![0f32; N_MELS * N_BINS];
    for (i, row) in weights.chunks_exact_mut(N_BINS).enumerate() {
        let (lo, mid, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
        let enorm = 2.0 / (hi - lo);
        for (w, &f) in row.iter_mut().zip(&fft_freqs) {
            let lower = -(lo - f) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            // librosa stores the triangle in float32, then scales it in place.
            let tri = lower.min(upper).max(0.0) as f32;
            *w = (f64::from(tri) * enorm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_slices_match_the_reference() {
        // compute_partial_slices(n, 1.3, 0.75) in Resemblyzer 0.1.4.
        assert_eq!(partial_starts(0), (vec![0], 25_600));
        assert_eq!(partial_starts(16_000), (vec![0], 25_600));
        assert_eq!(partial_starts(64_000), (vec![0, 77, 154, 231], 62_560));
        assert_eq!(partial_starts(160_000), (vec![0, 77, 154, 231, 308, 385, 462, 539, 616, 693, 770, 847], 161_120));
    }

    #[test]
    fn mel_filters_have_slaney_areas() {
        let w = mel_filters();
        // Band 0: 0 Hz .. mel_f[2]; its peak at mel_f[1] = 200/3 * (15 / 41 * ...) Hz.
        assert_eq!(w.len(), N_MELS * N_BINS);
        assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
        assert!(w.chunks_exact(N_BINS).all(|row| row.iter().any(|&x| x > 0.0)));
    }

    #[test]
    fn a_tone_lands_in_its_band() {
        let fe = MelFrontEnd::new();
        let wav: Vec<f32> =
            (0..16_000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin()).collect();
        let mel = fe.frames(&wav, 50);
        let row = &mel[25 * N_MELS..26 * N_MELS];
        let peak = row.iter().enumerate().fold((0, 0.0f32), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
        let centre = mel_to_hz(hz_to_mel(8000.0) * (peak + 1) as f64 / (N_MELS + 1) as f64);
        assert!((centre - 1000.0).abs() < 150.0, "peak band {peak} centred at {centre} Hz");
    }
}
