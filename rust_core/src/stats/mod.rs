//! Concept statistics: exact Mann–Whitney AUROC of every unit (SAE feature or
//! neuron) against every concept, with DeLong standard errors, firing rates,
//! mean activation on/off concept, top-n precision and exemplars.
//!
//! * [`sparse::score_sparse`] takes top-k codes (`indices[N,k]`, `values[N,k]`):
//!   only nonzeros are sorted; the zeros form one tie group.
//! * [`dense::score_dense`] takes `scores[N,F]`: one sort per unit.
//!
//! * [`shared::score_shared`] scores a shared dictionary's matched image and
//!   caption codes (both AUROC tables) and sums the pairs' moments ([`pairs`]).
//!
//! * [`tokens`] aggregates token rows per sample (max or mean), streamed in
//!   chunks, and scores the samples.
//!
//! Both walk each unit's sorted activations once and update every concept in
//! the same pass (see [`walk`]).

pub mod dense;
pub mod labels;
pub mod pairs;
pub mod radix;
pub mod scores;
pub mod shared;
pub mod sparse;
pub mod tokens;
pub mod walk;

#[cfg(test)]
mod brute;

pub use labels::LabelIndex;
pub use scores::Scores;
pub use walk::ScoreOptions;
