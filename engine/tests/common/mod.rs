//! Helpers the engine's test binaries share.

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;

/// Each row of `batches` as its cells joined by ` | `, sorted: results to compare with an
/// oracle's whatever order they came in.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).expect("a printable cell"))
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}
