//! Audio files to mono float samples, as `librosa.load(path, sr=None)` reads them.
//!
//! librosa reads through soundfile (libsndfile): integer PCM scaled to [-1, 1) by
//! 2^(bits-1) (unsigned 8-bit centred on 128 first), float samples as they are, MP3
//! through mpg123 with the encoder delay and padding removed (gapless), and several
//! channels averaged into one (`np.mean(y, axis=0)` in float32). Symphonia's sample
//! conversions are the same scalings; gapless trimming is switched on here.

use crate::error::{Error, Result};
use std::io::Cursor;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{self, CodecType, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Longest audio the audio encoder accepts, in seconds of decoded sound.
pub const MAX_DURATION_SECS: u32 = 600;

/// Sample rates accepted (Hz): telephone-band 4 kHz up to 96 kHz studio rates. The top
/// bounds memory: 600 s at 96 kHz is 230 MB of mono f32 samples before resampling.
const MIN_SAMPLE_RATE: u32 = 4_000;
const MAX_SAMPLE_RATE: u32 = 96_000;

/// Most channels accepted.
const MAX_CHANNELS: usize = 32;

/// Consecutive undecodable packets after which a file is given up as corrupt.
const MAX_BAD_PACKETS: u32 = 16;

/// Container and codec of a file, probed without decoding.
pub(crate) struct Probed {
    reader: Box<dyn FormatReader>,
    track_id: u32,
    pub(crate) format: &'static str,
    pub(crate) sample_rate: u32,
    pub(crate) channels: u16,
    /// Frames per channel, when the container says.
    pub(crate) frames: Option<u64>,
    codec_params: codecs::CodecParameters,
}

/// Opens `bytes` as an audio file and checks rate, channels and stated length.
pub(crate) fn open(bytes: &[u8]) -> Result<Probed> {
    if bytes.len() > crate::MAX_INPUT_BYTES {
        return Err(Error::input(format!(
            "the audio file is {} bytes, more than the {} bytes limit",
            bytes.len(),
            crate::MAX_INPUT_BYTES
        )));
    }
    let not_audio = || Error::input("not a WAV/FLAC/MP3/Ogg Vorbis file");
    if bytes.is_empty() {
        return Err(Error::input("empty input, not an audio file"));
    }
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let format_options = FormatOptions { enable_gapless: true, ..Default::default() };
    let probed = guard(|| {
        symphonia::default::get_probe().format(&Hint::new(), stream, &format_options, &MetadataOptions::default())
    })?
    .map_err(|_| not_audio())?;
    let reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != codecs::CODEC_TYPE_NULL)
        .ok_or_else(|| Error::input("the file has no audio track"))?;
    let params = track.codec_params.clone();
    let format = format_name(params.codec).ok_or_else(|| Error::input("unsupported audio codec in this file"))?;
    let sample_rate = params.sample_rate.ok_or_else(|| Error::input("the file does not state its sample rate"))?;
    check_rate(sample_rate)?;
    let channels = params.channels.map_or(0, |c| c.count());
    if channels > MAX_CHANNELS {
        return Err(Error::input(format!("the audio has {channels} channels, more than the {MAX_CHANNELS} supported")));
    }
    let frames = params.n_frames;
    if let Some(n) = frames {
        check_duration(n, sample_rate)?;
    }
    Ok(Probed {
        track_id: track.id,
        reader,
        format,
        sample_rate,
        channels: u16::try_from(channels).unwrap_or(u16::MAX),
        frames,
        codec_params: params,
    })
}

/// A decoded file.
pub(crate) struct Decoded {
    /// Mono samples at `sample_rate`.
    pub(crate) samples: Vec<f32>,
    pub(crate) sample_rate: u32,
    pub(crate) format: &'static str,
    pub(crate) channels: u16,
}

/// The whole file as mono samples at its own rate.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded> {
    let probed = open(bytes)?;
    let (sample_rate, format, channels) = (probed.sample_rate, probed.format, probed.channels);
    let samples = guard(move || decode_track(probed))??;
    Ok(Decoded { samples, sample_rate, format, channels })
}

fn decode_track(mut p: Probed) -> Result<Vec<f32>> {
    let mut decoder = symphonia::default::get_codecs()
        .make(&p.codec_params, &DecoderOptions::default())
        .map_err(|e| Error::input(format!("cannot decode this {} file: {e}", p.format)))?;
    let max_frames = u64::from(MAX_DURATION_SECS) * u64::from(p.sample_rate);
    let mut mono: Vec<f32> =
        Vec::with_capacity(p.frames.map_or(0, |n| usize::try_from(n.min(max_frames)).unwrap_or(0)));
    let mut buffer: Option<(SampleBuffer<f32>, usize)> = None;
    let mut bad_packets = 0u32;
    let mut last_error = String::new();
    loop {
        let packet = match p.reader.next_packet() {
            Ok(packet) => packet,
            // The end of the stream, or a file cut short: keep what was decoded (as
            // libsndfile does for a truncated data chunk).
            Err(SymphoniaError::IoError(_)) => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                last_error = e.to_string();
                bad_packets += 1;
                if bad_packets > MAX_BAD_PACKETS {
                    break;
                }
                continue;
            }
        };
        if packet.track_id() != p.track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymphoniaError::DecodeError(e)) => {
                last_error = e.to_owned();
                bad_packets += 1;
                if bad_packets > MAX_BAD_PACKETS {
                    break;
                }
                continue;
            }
            Err(SymphoniaError::IoError(_)) => break,
            Err(e) => return Err(Error::input(format!("cannot decode this {} file: {e}", p.format))),
        };
        bad_packets = 0;
        let spec = *decoded.spec();
        if spec.rate != p.sample_rate {
            return Err(Error::input("the sample rate changes inside the file"));
        }
        let channels = spec.channels.count();
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(Error::input(format!("the audio has {channels} channels")));
        }
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let needed = frames * channels;
        let buf = match &mut buffer {
            Some((b, ch)) if b.capacity() >= needed && *ch == channels => b,
            _ => &mut buffer.insert((SampleBuffer::<f32>::new(frames as u64, spec), channels)).0,
        };
        buf.copy_interleaved_ref(decoded);
        let samples = buf.samples();
        if channels == 1 {
            mono.extend_from_slice(samples);
        } else {
            // np.mean over channels in float32: the sum in channel order, then / n.
            let n = channels as f32;
            mono.extend(samples.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / n));
        }
        if mono.len() as u64 > max_frames {
            // The container did not state its length (or understated it): stop here.
            return Err(Error::input(format!("audio is longer than the {MAX_DURATION_SECS} s limit")));
        }
    }
    if mono.is_empty() {
        return Err(Error::input(if last_error.is_empty() {
            format!("the {} file holds no audio samples", p.format)
        } else {
            format!("cannot decode this {} file: {last_error}", p.format)
        }));
    }
    Ok(mono)
}

/// Rejects rates the pipeline does not take.
pub(crate) fn check_rate(rate: u32) -> Result<()> {
    if (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(Error::input(format!(
            "the sample rate is {rate} Hz, outside the supported {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz"
        )))
    }
}

/// Rejects audio longer than [`MAX_DURATION_SECS`].
pub(crate) fn check_duration(frames: u64, rate: u32) -> Result<()> {
    if frames > u64::from(MAX_DURATION_SECS) * u64::from(rate) {
        let secs = frames / u64::from(rate.max(1));
        return Err(Error::input(format!(
            "audio is {} s long, more than the {MAX_DURATION_SECS} s limit",
            thousands(secs)
        )));
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Every PCM flavour symphonia's WAV reader produces.
const PCM_CODECS: [CodecType; 38] = {
    use codecs::*;
    [
        CODEC_TYPE_PCM_S32LE,
        CODEC_TYPE_PCM_S32LE_PLANAR,
        CODEC_TYPE_PCM_S32BE,
        CODEC_TYPE_PCM_S32BE_PLANAR,
        CODEC_TYPE_PCM_S24LE,
        CODEC_TYPE_PCM_S24LE_PLANAR,
        CODEC_TYPE_PCM_S24BE,
        CODEC_TYPE_PCM_S24BE_PLANAR,
        CODEC_TYPE_PCM_S16LE,
        CODEC_TYPE_PCM_S16LE_PLANAR,
        CODEC_TYPE_PCM_S16BE,
        CODEC_TYPE_PCM_S16BE_PLANAR,
        CODEC_TYPE_PCM_S8,
        CODEC_TYPE_PCM_S8_PLANAR,
        CODEC_TYPE_PCM_U32LE,
        CODEC_TYPE_PCM_U32LE_PLANAR,
        CODEC_TYPE_PCM_U32BE,
        CODEC_TYPE_PCM_U32BE_PLANAR,
        CODEC_TYPE_PCM_U24LE,
        CODEC_TYPE_PCM_U24LE_PLANAR,
        CODEC_TYPE_PCM_U24BE,
        CODEC_TYPE_PCM_U24BE_PLANAR,
        CODEC_TYPE_PCM_U16LE,
        CODEC_TYPE_PCM_U16LE_PLANAR,
        CODEC_TYPE_PCM_U16BE,
        CODEC_TYPE_PCM_U16BE_PLANAR,
        CODEC_TYPE_PCM_U8,
        CODEC_TYPE_PCM_U8_PLANAR,
        CODEC_TYPE_PCM_F32LE,
        CODEC_TYPE_PCM_F32LE_PLANAR,
        CODEC_TYPE_PCM_F32BE,
        CODEC_TYPE_PCM_F32BE_PLANAR,
        CODEC_TYPE_PCM_F64LE,
        CODEC_TYPE_PCM_F64LE_PLANAR,
        CODEC_TYPE_PCM_F64BE,
        CODEC_TYPE_PCM_F64BE_PLANAR,
        CODEC_TYPE_PCM_ALAW,
        CODEC_TYPE_PCM_MULAW,
    ]
};

fn format_name(codec: CodecType) -> Option<&'static str> {
    use codecs::*;
    Some(match codec {
        CODEC_TYPE_FLAC => "FLAC",
        CODEC_TYPE_MP3 | CODEC_TYPE_MP2 | CODEC_TYPE_MP1 => "MP3",
        CODEC_TYPE_VORBIS => "Ogg Vorbis",
        c if PCM_CODECS.contains(&c) => "WAV",
        _ => return None,
    })
}

/// Runs a decoder step, turning a panic inside a third-party decoder (malformed data
/// it did not anticipate) into an input error instead of unwinding into the caller.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| Error::input("the audio decoder failed on malformed data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(600), "600");
        assert_eq!(thousands(3600), "3,600");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn duration_limit_names_the_length() {
        let e = check_duration(3600 * 16_000, 16_000).unwrap_err().to_string();
        assert_eq!(e, "audio is 3,600 s long, more than the 600 s limit");
        assert!(check_duration(600 * 16_000, 16_000).is_ok());
    }

    #[test]
    fn random_bytes_are_not_audio() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(matches!(decode(&bytes), Err(Error::Input(_))));
        assert!(matches!(decode(b""), Err(Error::Input(_))));
    }
}
