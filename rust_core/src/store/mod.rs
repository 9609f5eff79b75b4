//! The activation store: zarr v3 arrays of activation rows written and read
//! with the `zarrs` crate, crash-safe commits, and a shuffled batch stream.

pub mod direct;
pub mod dtype;
pub mod durable;
pub mod group;
pub mod rows;
pub mod shuffle;

pub use dtype::ElemType;
pub use durable::DurableStore;
pub use rows::{
    nonfinite_rows, prepare_commit_all, ArrayLayout, ChunkBytes, Compression, RowArray,
};
pub use shuffle::{ShuffleConfig, ShuffleStream};
