//! Status histories (a version's promotions, an app's releases): each records an entry at its
//! end and keeps the newest [`KEPT`].

/// How many entries a status history keeps.
pub const KEPT: usize = 20;

/// Appends `entry` to `history` and drops the oldest entries beyond [`KEPT`].
pub fn record<T>(history: &mut Vec<T>, entry: T) {
    history.push(entry);
    let excess = history.len().saturating_sub(KEPT);
    history.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_keeps_the_newest_entries() {
        let mut h = vec![];
        for i in 0..KEPT + 5 {
            record(&mut h, i);
        }
        assert_eq!(h.len(), KEPT);
        assert_eq!(h.first(), Some(&5));
        assert_eq!(h.last(), Some(&(KEPT + 4)));
    }
}
