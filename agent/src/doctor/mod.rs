//! The doctor (DESIGN §8): its one-second history of every signal, and
//! performance budgets.
//!
//! - [`History`]: a fixed ring of one [`Row`] a second (default 15 min,
//!   about 436 KiB, allocation-free after [`History::new`]), read as
//!   [`HistoryColumns`] for `GET /debug/history?since=-5m&series=…`
//!   ([`parse_since`], [`parse_series`]).
//! - [`Budgets`]: per-route latency and error targets and CPU / memory
//!   ceilings, from Rust ([`Budget`]) or `STETHOSCOPE_BUDGETS`
//!   ([`Budgets::parse`]).

mod budget;
mod history;
mod query;

pub use budget::{Budget, Budgets, RouteBudget, ANY_ROUTE, MAX_ROUTE_BUDGETS};
pub use history::{
    History, HistoryColumns, ResourceSlot, Row, RowRef, Series, SeriesColumn, Window,
};
pub use query::{parse_history_length, parse_series, parse_since};
