//! What the listings (`GET /v1/notifications`, `GET /v1/webhooks/deliveries`)
//! share: how their query's values are read, and how a page ends.

use std::str::FromStr;

use super::problem::Problem;

/// Items per page when the query does not say.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;

/// The query's `name`, when given, as one of `all`; a 400 naming them
/// otherwise.
pub(super) fn one_of<T>(
    name: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Option<T>,
    all: &[&str],
) -> Result<Option<T>, Problem> {
    raw.map(|v| {
        parse(v).ok_or_else(|| {
            Problem::bad_query(format!(
                "{name} must be one of {}; not {v:?}",
                all.join(", ")
            ))
        })
    })
    .transpose()
}

/// The `next` of a previous page, when given.
pub(super) fn cursor<Id: FromStr>(raw: Option<&str>) -> Result<Option<Id>, Problem> {
    raw.map(|c| {
        c.parse()
            .map_err(|_| Problem::bad_query("cursor: not a cursor this API gave".into()))
    })
    .transpose()
}

/// Items per page: 100 when not given, else taken as 1 to 1,000.
pub(super) fn limit(raw: Option<usize>) -> usize {
    raw.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The cursor of the page after `items`: the last one's id when the page is
/// full, `None` on the last page.
pub(super) fn next<T, Id>(items: &[T], limit: usize, id: impl Fn(&T) -> Id) -> Option<Id> {
    (items.len() == limit)
        .then(|| items.last().map(id))
        .flatten()
}
