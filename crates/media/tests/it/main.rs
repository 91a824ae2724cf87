//! Integration tests of kernelize-media.

mod image;
