//! Integration tests of kernelize-media.

mod audio;
mod image;
