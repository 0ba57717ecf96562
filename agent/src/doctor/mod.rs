//! The doctor (DESIGN §8), starting with its one-second history of every
//! signal.
//!
//! - [`History`]: a fixed ring of one [`Row`] a second (default 15 min,
//!   about 436 KiB, allocation-free after [`History::new`]), read as
//!   [`HistoryColumns`] for `GET /debug/history?since=-5m&series=…`
//!   ([`parse_since`], [`parse_series`]).

mod history;
mod query;

pub use history::{
    History, HistoryColumns, ResourceSlot, Row, RowRef, Series, SeriesColumn, Window,
};
pub use query::{parse_history_length, parse_series, parse_since};
