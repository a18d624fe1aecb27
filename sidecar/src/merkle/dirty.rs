//! Which subpages changed since they were last handed out for flushing: one bit per subpage.
//!
//! Two consumers take from it. The flusher takes a whole round's worth by id; the committer takes
//! a few at a time to carry in its own transactions, from a cursor that moves on round the set,
//! so that every dirty subpage gets its turn however the writes fall. Finding the next dirty
//! subpage skips 64 clean ones per word, so a sparse set costs the committer microseconds even
//! at a million subpages.

#[derive(Clone, Debug)]
pub struct DirtySet {
    words: Vec<u64>,
    len: usize,
    count: usize,
    /// Where [`DirtySet::take_next`] looks first.
    cursor: usize,
}

impl DirtySet {
    /// `len` clean subpages.
    pub fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
            count: 0,
            cursor: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Marks `id` dirty.
    pub fn mark(&mut self, id: u32) {
        let (word, bit) = split(id);
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.count += 1;
        }
    }

    /// Marks `id` clean; returns whether it was dirty.
    pub fn clear(&mut self, id: u32) -> bool {
        let (word, bit) = split(id);
        let was = self.words[word] & bit != 0;
        if was {
            self.words[word] &= !bit;
            self.count -= 1;
        }
        was
    }

    /// Every dirty subpage, in id order.
    pub fn ids(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count);
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                out.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }

    /// Clears and returns up to `max` dirty subpages that `accept` takes, starting at the cursor
    /// and going round the set at most once; the cursor moves past the last one looked at.
    /// Subpages `accept` refuses stay dirty.
    pub fn take_next(&mut self, max: usize, mut accept: impl FnMut(u32) -> bool) -> Vec<u32> {
        let mut out = Vec::new();
        if self.count == 0 || max == 0 {
            return out;
        }
        let mut at = self.cursor;
        let mut left = self.len;
        while left > 0 && out.len() < max && self.count > 0 {
            match self.next_dirty(at, left) {
                None => break,
                Some(id) => {
                    let skipped = (id as usize + self.len - at) % self.len;
                    left -= skipped + 1;
                    at = (id as usize + 1) % self.len;
                    if accept(id) {
                        self.clear(id);
                        out.push(id);
                    }
                }
            }
        }
        self.cursor = at;
        out
    }

    /// The first dirty subpage at or after `from`, looking at most `span` subpages on, wrapping
    /// round the end.
    fn next_dirty(&self, from: usize, span: usize) -> Option<u32> {
        let mut pos = from;
        let mut left = span;
        while left > 0 {
            let (word, offset) = (pos / 64, pos % 64);
            let bits = self.words[word] >> offset;
            let in_word = (64 - offset).min(self.len - pos);
            if bits != 0 {
                let skip = bits.trailing_zeros() as usize;
                if skip < in_word.min(left) {
                    return Some((pos + skip) as u32);
                }
            }
            let step = in_word.min(left);
            left -= step;
            pos += step;
            if pos == self.len {
                pos = 0;
            }
        }
        None
    }

    /// Bytes of memory the set holds.
    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

fn split(id: u32) -> (usize, u64) {
    (id as usize / 64, 1 << (id % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marks_and_clears_count_once() {
        let mut set = DirtySet::new(130);
        set.mark(3);
        set.mark(3);
        set.mark(129);
        assert_eq!(set.count(), 2);
        assert_eq!(set.ids(), vec![3, 129]);
        assert!(set.clear(3));
        assert!(!set.clear(3));
        assert_eq!(set.count(), 1);
    }

    #[test]
    fn take_next_goes_round_from_the_cursor() {
        let mut set = DirtySet::new(200);
        for id in [5, 70, 150, 199] {
            set.mark(id);
        }
        assert_eq!(set.take_next(2, |_| true), vec![5, 70]);
        // A subpage dirtied behind the cursor waits for the cursor to come round.
        set.mark(6);
        assert_eq!(set.take_next(3, |_| true), vec![150, 199, 6]);
        assert_eq!(set.count(), 0);
        assert!(set.take_next(3, |_| true).is_empty());
    }

    #[test]
    fn refused_subpages_stay_dirty() {
        let mut set = DirtySet::new(64);
        set.mark(1);
        set.mark(2);
        assert_eq!(set.take_next(8, |id| id != 1), vec![2]);
        assert_eq!(set.ids(), vec![1]);
    }

    proptest! {
        /// Whatever the marks and the cursor, repeated takes hand out exactly the dirty
        /// subpages, each once, and the set's bookkeeping agrees with a plain list.
        #[test]
        fn take_next_hands_out_every_dirty_subpage_once(
            len in 1usize..300,
            marks in proptest::collection::vec(0u32..300, 0..200),
            first in 0usize..10,
            batch in 1usize..20,
        ) {
            let mut set = DirtySet::new(len);
            let mut expected: Vec<u32> = marks.iter().map(|m| m % len as u32).collect();
            for &id in &expected {
                set.mark(id);
            }
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(set.count(), expected.len());
            prop_assert_eq!(set.ids(), expected.clone());
            let mut taken = set.take_next(first, |_| true);
            loop {
                let more = set.take_next(batch, |_| true);
                if more.is_empty() {
                    break;
                }
                prop_assert!(more.len() <= batch);
                taken.extend(more);
            }
            prop_assert_eq!(set.count(), 0);
            taken.sort_unstable();
            prop_assert_eq!(taken, expected);
        }
    }
}
