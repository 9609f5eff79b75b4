//! Committing rows: the partial last chunks and new shapes of several arrays
//! staged and made durable together, before the caller's commit point.

use rayon::prelude::*;

use super::RowArray;
use crate::error::{CoreError, CoreResult};
use crate::store::durable::sync_staged;

/// The first half of a commit of `rows[i]` rows of `arrays[i]`: every array's
/// partial last chunk and its new shape (`zarr.json`) are staged, then all of
/// it is made durable in one pass ([`sync_staged`]: one parallel round of
/// fsyncs, the shapes renamed after the chunks). The caller then writes the
/// commit point (the committed counts in the group attributes) and calls
/// [`RowArray::mark_committed`]. A crash in between leaves shapes ahead of the
/// committed counts, which `open` truncates back.
pub fn prepare_commit_all(arrays: &mut [&mut RowArray], rows: &[u64]) -> CoreResult<()> {
    if rows.len() != arrays.len() {
        return Err(CoreError::input(format!(
            "{} row counts for {} arrays",
            rows.len(),
            arrays.len()
        )));
    }
    for (a, &n) in arrays.iter().zip(rows) {
        if n > a.written {
            return Err(CoreError::input(format!(
                "{}: cannot commit {n} rows, only {} written",
                a.name, a.written
            )));
        }
    }
    arrays.par_iter_mut().try_for_each(|a| a.stage_tail())?;
    let mut staged = Vec::new();
    for (a, &n) in arrays.iter_mut().zip(rows) {
        let store = a.array.storage().clone();
        store.set_stage_metadata(true);
        let shape = a.persist_shape(n);
        store.set_stage_metadata(false);
        shape?;
        staged.extend(store.take_staged()?);
    }
    sync_staged(staged)
}

impl RowArray {
    /// Commits `rows` (≤ written) rows of this array alone: [`prepare_commit_all`]
    /// then [`RowArray::mark_committed`], with no commit point of its own.
    pub fn commit(&mut self, rows: u64) -> CoreResult<()> {
        prepare_commit_all(&mut [&mut *self], &[rows])?;
        self.mark_committed(rows)
    }

    /// Records `rows` as committed after [`prepare_commit_all`] and the commit point.
    pub fn mark_committed(&mut self, rows: u64) -> CoreResult<()> {
        if rows > self.written || self.persisted != Some(rows) {
            return Err(CoreError::input(format!(
                "{}: {rows} rows were not prepared for commit",
                self.name
            )));
        }
        self.committed = rows;
        Ok(())
    }

    pub(super) fn persist_shape(&mut self, rows: u64) -> CoreResult<()> {
        if self.persisted == Some(rows) {
            return Ok(());
        }
        let in_memory = self.array.shape().to_vec();
        let mut s = in_memory.clone();
        s[0] = rows;
        let err = |e: &dyn std::fmt::Display| CoreError::store(format!("array {}: {e}", self.name));
        self.array.set_shape(s).map_err(|e| err(&e))?;
        self.array.store_metadata().map_err(|e| err(&e))?;
        if in_memory[0] > rows {
            self.array.set_shape(in_memory).map_err(|e| err(&e))?;
        }
        self.persisted = Some(rows);
        Ok(())
    }
}
