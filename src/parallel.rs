//! Splitting a batch's CPU work (decoding records, deciding partitions)
//! over a few threads. Pure: no I/O, results in input order.
//!
//! Scoped threads are started per batch: a start costs some 10-20 µs,
//! against milliseconds of work in a full batch, and small batches (the
//! live, low-latency case) stay on the caller's thread.

/// How many threads `threads = 0` means: the cores this process may use.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

/// Contiguous chunks of `weights` for `threads` threads, each of about the
/// same total weight, as index ranges covering every item in order. Fewer
/// chunks when the total is under `min_weight` per extra thread (one chunk
/// when it is under `2 * min_weight`).
pub fn split(weights: &[usize], threads: usize, min_weight: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = weights.iter().sum();
    let chunks = threads
        .min(total / min_weight.max(1))
        .min(weights.len())
        .max(1);
    if chunks == 1 {
        return std::iter::once(0..weights.len()).collect();
    }
    let mut ranges = Vec::with_capacity(chunks);
    let mut start = 0;
    let mut acc = 0usize;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        let cut = (ranges.len() + 1) * total / chunks;
        let left_items = weights.len() - (i + 1);
        let left_chunks = chunks - ranges.len() - 1;
        if left_chunks > 0 && (acc >= cut || left_items == left_chunks) {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    ranges.push(start..weights.len());
    ranges.retain(|r| !r.is_empty());
    ranges
}

/// `items.iter().map(f).collect()`, with the items cut by [`split`] and
/// every chunk but the first mapped on a scoped thread of its own.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> usize,
    threads: usize,
    min_weight: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let weights: Vec<usize> = items.iter().map(weight).collect();
    let ranges = split(&weights, threads, min_weight);
    if ranges.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut rest = ranges[1..]
            .iter()
            .map(|r| {
                let chunk = &items[r.clone()];
                scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>())
            })
            .collect::<Vec<_>>()
            .into_iter();
        let mut out: Vec<R> = items[ranges[0].clone()].iter().map(f).collect();
        out.reserve(items.len() - out.len());
        for handle in rest.by_ref() {
            match handle.join() {
                Ok(part) => out.extend(part),
                // A panic in `f` is a bug; carry it to the caller's thread
                // as if `f` had run there.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(ranges: &[std::ops::Range<usize>], n: usize) -> bool {
        if n == 0 {
            return ranges.len() == 1 && ranges[0] == (0..0);
        }
        let mut next = 0;
        for r in ranges {
            if r.start != next || r.is_empty() {
                return false;
            }
            next = r.end;
        }
        next == n
    }

    #[test]
    fn small_totals_stay_on_one_chunk() {
        assert_eq!(split(&[10, 10, 10], 2, 100), vec![0..3]);
        assert_eq!(split(&[], 4, 1), vec![0..0]);
        assert_eq!(split(&[500], 4, 1), vec![0..1]);
    }

    #[test]
    fn chunks_balance_the_weight_and_cover_every_item_in_order() {
        let w = [100, 100, 100, 100, 100, 100];
        let r = split(&w, 2, 10);
        assert_eq!(r, vec![0..3, 3..6]);
        let w = [1000, 10, 10, 10, 10, 10];
        let r = split(&w, 2, 10);
        assert_eq!(r, vec![0..1, 1..6]);
        for threads in 1..8 {
            for n in 0..12 {
                let w: Vec<usize> = (0..n).map(|i| (i * 37) % 11 + 1).collect();
                let r = split(&w, threads, 1);
                assert!(covers(&r, n), "{threads} threads over {w:?}: {r:?}");
                assert!(r.len() <= threads.max(1));
            }
        }
    }

    #[test]
    fn map_keeps_the_order_of_the_items() {
        let items: Vec<u32> = (0..1000).collect();
        for threads in 1..5 {
            let out = map(&items, |_| 1, threads, 10, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
    }
}
