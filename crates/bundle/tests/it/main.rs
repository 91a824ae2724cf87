//! Integration tests of kernelize-bundle: the documents as a server signs them and a
//! device checks them, downloads checked chunk by chunk, deltas between real kernels.

mod chunks;
mod delta;
mod documents;
mod support;
