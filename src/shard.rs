//! Shards: a fixed split of a plan's jobs into N parts, so that N processes (a Slurm job
//! array's elements, or processes started by hand on several machines sharing one output
//! directory) each run their part.
//!
//! The split is a pure function of the plan: the jobs in their plan order, each with its
//! work estimate, are dealt largest first to the shard with the least work so far (ties:
//! the plan order, then the lowest shard index). Every process computes the same
//! partition from the same spec, without talking to the others; no shard's list is ever
//! written down. What a shard *runs* is its jobs that the output directory does not hold
//! finished, so a shard re-run after a failure redoes only what is missing, and two
//! processes running one shard at once only duplicate work (the stores keep one copy:
//! `sweep::store`, `meanfield::experiment`).

use std::fmt;

/// Errors of a shard's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// `--shard` is not `J/N` with 0 <= J < N.
    #[error("--shard '{value}': {why}")]
    Bad { value: String, why: String },
}

/// Shard `index` of `count` (0-based, as Slurm numbers array elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Most shards a plan may be split into (far above any job array a cluster accepts).
pub const MAX_SHARDS: usize = 100_000;

impl Shard {
    /// Shard `index` of `count`: `count` between 1 and [`MAX_SHARDS`], `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        let bad = |why: String| ShardError::Bad {
            value: format!("{index}/{count}"),
            why,
        };
        if count == 0 || count > MAX_SHARDS {
            return Err(bad(format!(
                "the number of shards N must be between 1 and {MAX_SHARDS}"
            )));
        }
        if index >= count {
            return Err(bad(format!(
                "the shard index J must be below N = {count} (shards are numbered 0 to N-1, like Slurm's array elements)"
            )));
        }
        Ok(Shard { index, count })
    }

    /// Parses `J/N`.
    pub fn parse(s: &str) -> Result<Shard, ShardError> {
        let bad = |why: &str| ShardError::Bad {
            value: s.into(),
            why: why.into(),
        };
        let (j, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected J/N, e.g. 0/4 (shard 0 of 4)"))?;
        let num = |x: &str, what: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| bad(&format!("{what} '{x}' is not a non-negative integer")))
        };
        let (j, n) = (num(j, "J")?, num(n, "N")?);
        Shard::new(j, n).map_err(|e| match e {
            ShardError::Bad { why, .. } => bad(&why),
        })
    }

    /// Whether job `i` of `assignment` ([`partition`]) is in this shard.
    pub fn holds(&self, assignment: &[usize], i: usize) -> bool {
        assignment.get(i) == Some(&self.index)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard of each job: `costs[i]` is job i's work estimate (any non-negative unit; a
/// non-finite cost counts as the largest). Largest first, each to the least loaded
/// shard; equal costs keep the plan order, equal loads take the lowest shard. With
/// `count` > jobs the last shards are empty.
pub fn partition(costs: &[f64], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let key = |c: f64| if c.is_finite() { c.max(0.0) } else { f64::MAX };
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| key(costs[b]).total_cmp(&key(costs[a])).then(a.cmp(&b)));
    let mut load = vec![0.0f64; count];
    let mut out = vec![0usize; costs.len()];
    for i in order {
        let mut best = 0;
        for s in 1..count {
            if load[s] < load[best] {
                best = s;
            }
        }
        load[best] += key(costs[i]);
        out[i] = best;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["4/4", "1", "a/3", "0/0", "-1/3", "1/2/3"] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert!(
            Shard::parse("4/4")
                .unwrap_err()
                .to_string()
                .contains("below N = 4")
        );
    }

    #[test]
    fn partition_is_balanced_largest_first_and_total() {
        let costs = [5.0, 1.0, 4.0, 3.0, 3.0, 2.0, 2.0];
        let p = partition(&costs, 3);
        // 5 -> s0, 4 -> s1, 3 -> s2, 3 -> s2 (3 < 4), 2 -> s1, 2 -> s0, 1 -> s1 (tie: lowest).
        assert_eq!(p, vec![0, 1, 1, 2, 2, 1, 0]);
        let mut load = [0.0; 3];
        for (i, s) in p.iter().enumerate() {
            load[*s] += costs[i];
        }
        assert_eq!(load, [7.0, 7.0, 6.0]);
        assert_eq!(partition(&costs, 1), vec![0; 7]);
        assert_eq!(partition(&[1.0, 1.0], 4), vec![0, 1]);
        assert!(partition(&[], 3).is_empty());
    }
}
