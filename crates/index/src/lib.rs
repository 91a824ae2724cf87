//! Kernelize search: SIMD distance kernels, the HNSW graph, scalar int8 and RaBitQ
//! quantization, metadata filters, BM25 keyword search and hybrid fusion, and the
//! collection-level searcher that ties them to the store's segments and memtable.

pub mod bitset;
pub mod bm25;
mod bytes;
pub mod distance;
pub mod filter;
pub mod hnsw;
pub mod quant;
pub mod search;
pub mod segment_index;
pub mod space;
