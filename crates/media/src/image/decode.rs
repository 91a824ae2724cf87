//! Untrusted image bytes to 8-bit RGB pixels, as PIL's `Image.open(..).convert("RGB")`
//! gives them to a PyTorch user, within fixed bounds.
//!
//! Only JPEG, PNG and WebP are accepted, recognised by their signature (never by a file
//! name). The header is read first and checked against [`MAX_SIDE`] and
//! [`MAX_DECODED_BYTES`] before any pixel buffer is allocated; the decoders get the same
//! bounds as [`image::Limits`]. Conversions follow PIL: alpha is dropped (not composited
//! over a background), grayscale is replicated to three channels, palettes are expanded,
//! CMYK is converted by the JPEG decoder, and a 16-bit sample keeps its high byte
//! (`v >> 8`, PIL's `RGB;16B` unpacking; for 16-bit grayscale PIL's own conversion clips
//! to 255 instead, which the reference script replaces by the same `v >> 8`). EXIF
//! orientation is not applied, as PIL does not on open.

use crate::encoder::MAX_INPUT_BYTES;
use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Largest width or height accepted, in pixels.
pub const MAX_SIDE: u32 = 16_384;

/// Largest decoded image accepted, in bytes of the decoder's own pixel format (a
/// 16,384 × 8,192 RGBA image, 10,000 × 10,000 RGB at 16 bits per sample fits, a larger one
/// does not).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// What the header of an image file says, read without decoding its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// `"JPEG"`, `"PNG"` or `"WebP"`.
    pub format: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Decoded pixels: `height` rows of `width` RGB triples, row-major.
pub(crate) struct Rgb8 {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) pixels: Vec<u8>,
}

/// Format, width and height of an image file, from its header alone (the pixels are not
/// decoded, so this is cheap even for a large image). Fails with [`Error::Input`] when the
/// bytes are not a JPEG, PNG or WebP image, the header is damaged, or the image is larger
/// than the encoder accepts.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo> {
    let (format, decoder) = open(bytes)?;
    let (width, height) = decoder.dimensions();
    check_size(format, width, height, decoder.total_bytes())?;
    Ok(ImageInfo { format: format_name(format), width, height })
}

/// Decodes an image file to RGB (see the module documentation for the conversions); also
/// returns what its header says.
pub(crate) fn decode(bytes: &[u8]) -> Result<(ImageInfo, Rgb8)> {
    // The decoders are fuzzed upstream and should never panic; should one still do so
    // on some input, that input fails alone instead of taking the process down.
    std::panic::catch_unwind(|| decode_checked(bytes)).unwrap_or_else(|_| {
        Err(Error::input("the image decoder failed on this file (it panicked); the file is probably damaged"))
    })
}

fn decode_checked(bytes: &[u8]) -> Result<(ImageInfo, Rgb8)> {
    let (format, mut decoder) = open(bytes)?;
    let (width, height) = decoder.dimensions();
    check_size(format, width, height, decoder.total_bytes())?;
    let info = ImageInfo { format: format_name(format), width, height };
    let mut limits = limits();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    decoder.set_limits(limits).map_err(|e| Error::input(format!("cannot decode the {} image: {e}", info.format)))?;
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::input(format!("cannot decode the {} image: {e}", info.format)))?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    Ok((info, Rgb8 { width, height, pixels: to_rgb8(image) }))
}

/// The format of `bytes` and a decoder that has read its header (with the allocation
/// bound only: the size limits are checked by [`check_size`], whose messages say more).
fn open(bytes: &[u8]) -> Result<(ImageFormat, impl ImageDecoder + '_)> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Error::input(format!(
            "image file is {} bytes, more than the {} MiB limit",
            bytes.len(),
            MAX_INPUT_BYTES >> 20
        )));
    }
    let format = sniff(bytes)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| Error::input(format!("cannot read the {} header: {e}", format_name(format))))?;
    Ok((format, decoder))
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

/// The format named by the file's signature; anything but JPEG, PNG and WebP is an error
/// that names what the bytes are, when that is known, or shows the first bytes.
fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::input("empty input: no image bytes"));
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(ImageFormat::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(ImageFormat::Png);
    }
    if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(ImageFormat::WebP);
    }
    if let Ok(other) = image::guess_format(bytes) {
        let name = other.extensions_str().first().map_or_else(|| format!("{other:?}"), |e| e.to_uppercase());
        return Err(Error::input(format!("a {name} image; only JPEG, PNG and WebP images are supported")));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Error::input(format!("not a JPEG/PNG/WebP image (starts with 0x{})", head.join(" "))))
}

fn check_size(format: ImageFormat, width: u32, height: u32, decoded_bytes: u64) -> Result<()> {
    let name = format_name(format);
    if width == 0 || height == 0 {
        return Err(Error::input(format!("the {name} image is {width}×{height} pixels: it has no pixels")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::input(format!("image is {width}×{height} pixels, more than the {MAX_SIDE} limit")));
    }
    if decoded_bytes > MAX_DECODED_BYTES {
        return Err(Error::input(format!(
            "image is {width}×{height} pixels ({} MiB decoded), more than the {} MiB limit",
            decoded_bytes >> 20,
            MAX_DECODED_BYTES >> 20
        )));
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

/// Row-major RGB bytes of a decoded image, converted as PIL's `convert("RGB")`: alpha
/// dropped, gray replicated, 16-bit samples reduced to their high byte.
fn to_rgb8(image: DynamicImage) -> Vec<u8> {
    fn gray<T: Copy>(samples: &[T], stride: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
        samples.chunks_exact(stride).flat_map(|p| [to_u8(p[0]); 3]).collect()
    }
    fn colour<T: Copy>(samples: &[T], stride: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
        samples.chunks_exact(stride).flat_map(|p| [to_u8(p[0]), to_u8(p[1]), to_u8(p[2])]).collect()
    }
    let high = |v: u16| v.to_be_bytes()[0];
    let same = |v: u8| v;
    match image {
        DynamicImage::ImageRgb8(buffer) => buffer.into_raw(),
        DynamicImage::ImageRgba8(buffer) => colour(buffer.as_raw(), 4, same),
        DynamicImage::ImageLuma8(buffer) => gray(buffer.as_raw(), 1, same),
        DynamicImage::ImageLumaA8(buffer) => gray(buffer.as_raw(), 2, same),
        DynamicImage::ImageRgb16(buffer) => colour(buffer.as_raw(), 3, high),
        DynamicImage::ImageRgba16(buffer) => colour(buffer.as_raw(), 4, high),
        DynamicImage::ImageLuma16(buffer) => gray(buffer.as_raw(), 1, high),
        DynamicImage::ImageLumaA16(buffer) => gray(buffer.as_raw(), 2, high),
        // Not produced by the JPEG, PNG and WebP decoders; the crate's own conversion.
        other => other.into_rgb8().into_raw(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn unknown_bytes_name_their_first_bytes() {
        let err = decode(b"hello world").err().unwrap().to_string();
        assert_eq!(err, "not a JPEG/PNG/WebP image (starts with 0x68 65 6c 6c 6f 20 77 6f)");
        let err = decode(b"GIF89a\x01\x00\x01\x00").err().unwrap().to_string();
        assert_eq!(err, "a GIF image; only JPEG, PNG and WebP images are supported");
        assert!(decode(b"").err().unwrap().to_string().contains("empty"));
    }

    #[test]
    fn sixteen_bit_samples_keep_their_high_byte() {
        let buffer = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0x12ff, 0xab00, 0xffff]).unwrap();
        assert_eq!(to_rgb8(DynamicImage::ImageRgb16(buffer)), vec![0x12, 0xab, 0xff]);
        let buffer = image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(2, 1, vec![7, 0, 9, 255]).unwrap();
        assert_eq!(to_rgb8(DynamicImage::ImageLumaA8(buffer)), vec![7, 7, 7, 9, 9, 9]);
    }
}
