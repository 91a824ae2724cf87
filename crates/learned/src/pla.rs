//! Optimal error-bounded piecewise-linear approximation (PLA) in one pass.
//!
//! This is the streaming convex-hull algorithm of O'Rourke (1981) as used by
//! the PGM-index (Ferragina & Vinciguerra, VLDB 2020): points `(x, y)` with
//! strictly increasing `x` are added one at a time; the model keeps the set of
//! lines `f` with `|f(x) - y| <= eps` for every point so far, represented by its
//! two extreme lines (minimum and maximum slope) and the parts of the upper and
//! lower convex hulls that can still constrain them. When a point makes the set
//! empty the current segment ends, which yields the minimum number of segments
//! for the given `eps` (greedy is optimal for this problem).
//!
//! All geometry is exact: `x` spans the whole `u64` range and `y` is a position
//! in a slice of `u64` (so below 2^61), so differences fit in `i128` and every
//! product of a `dx` and a `dy` is below 2^126 in magnitude (|dx| < 2^64,
//! |dy| < 2^61 + 2 eps).

/// A point of the hull, with `y` already shifted by `+eps` (upper) or `-eps`
/// (lower).
#[derive(Clone, Copy, Debug, Default)]
struct HullPoint {
    x: i128,
    y: i128,
}

/// The direction from one hull point to another.
#[derive(Clone, Copy, Debug)]
struct Slope {
    dx: i128,
    dy: i128,
}

impl HullPoint {
    fn to(self, other: HullPoint) -> Slope {
        Slope { dx: other.x - self.x, dy: other.y - self.y }
    }
}

impl Slope {
    // Both operands always have `dx` of the same sign (both positive, or both
    // negative in the tangent searches), so cross-multiplication preserves the
    // order of `dy / dx`.
    fn lt(self, o: Slope) -> bool {
        self.dy * o.dx < self.dx * o.dy
    }
    fn gt(self, o: Slope) -> bool {
        self.dy * o.dx > self.dx * o.dy
    }
}

fn cross(o: HullPoint, a: HullPoint, b: HullPoint) -> i128 {
    let oa = o.to(a);
    let ob = o.to(b);
    oa.dx * ob.dy - oa.dy * ob.dx
}

/// A fitted segment: the line `y = intercept + slope * (x - first_x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fitted {
    pub first_x: u64,
    pub slope: f64,
    pub intercept: f64,
}

/// Streaming optimal PLA. Reuses its hull buffers across segments.
#[derive(Debug, Default)]
pub(crate) struct OptimalPla {
    eps: i128,
    lower: Vec<HullPoint>,
    upper: Vec<HullPoint>,
    lower_start: usize,
    upper_start: usize,
    points: usize,
    first_x: u64,
    first_y: u64,
    /// rect[0]/rect[2]: the minimum-slope line passes through them (an upper
    /// point, then a later lower point). rect[1]/rect[3]: the maximum-slope
    /// line (a lower point, then a later upper point).
    rect: [HullPoint; 4],
}

impl OptimalPla {
    /// Starts an empty segment with error bound `eps`.
    pub fn reset(&mut self, eps: u64) {
        self.eps = i128::from(eps);
        self.points = 0;
        self.lower.clear();
        self.upper.clear();
        self.lower_start = 0;
        self.upper_start = 0;
    }

    /// Adds a point. Returns `false` (and leaves the segment unchanged) when no
    /// line within `eps` of every point including this one exists; the caller
    /// then closes the segment with [`OptimalPla::fit`] and starts a new one.
    /// `x` must be strictly greater than every `x` added before.
    pub fn add(&mut self, x: u64, y: u64) -> bool {
        let xi = i128::from(x);
        let yi = i128::from(y);
        let up = HullPoint { x: xi, y: yi + self.eps };
        let lo = HullPoint { x: xi, y: yi - self.eps };
        match self.points {
            0 => {
                self.first_x = x;
                self.first_y = y;
                self.rect[0] = up;
                self.rect[1] = lo;
                self.upper.clear();
                self.lower.clear();
                self.upper.push(up);
                self.lower.push(lo);
                self.upper_start = 0;
                self.lower_start = 0;
                self.points = 1;
                return true;
            }
            1 => {
                self.rect[2] = lo;
                self.rect[3] = up;
                self.upper.push(up);
                self.lower.push(lo);
                self.points = 2;
                return true;
            }
            _ => {}
        }

        let min_slope = self.rect[0].to(self.rect[2]);
        let max_slope = self.rect[1].to(self.rect[3]);
        // The new upper point is below the minimum-slope line, or the new lower
        // point above the maximum-slope line: no feasible line remains.
        if self.rect[2].to(up).lt(min_slope) || self.rect[3].to(lo).gt(max_slope) {
            return false;
        }

        if self.rect[1].to(up).lt(max_slope) {
            // The maximum slope decreases: the new extreme line is the tangent
            // from `up` to the lower hull.
            let mut best = up.to(self.lower[self.lower_start]);
            let mut best_i = self.lower_start;
            for i in self.lower_start + 1..self.lower.len() {
                let s = up.to(self.lower[i]);
                if s.gt(best) {
                    break;
                }
                best = s;
                best_i = i;
            }
            self.rect[1] = self.lower[best_i];
            self.rect[3] = up;
            self.lower_start = best_i;
            // Keep the upper hull convex.
            let mut end = self.upper.len();
            while end >= self.upper_start + 2 && cross(self.upper[end - 2], self.upper[end - 1], up) <= 0 {
                end -= 1;
            }
            self.upper.truncate(end);
            self.upper.push(up);
        }

        if self.rect[0].to(lo).gt(min_slope) {
            // The minimum slope increases: tangent from `lo` to the upper hull.
            let mut best = lo.to(self.upper[self.upper_start]);
            let mut best_i = self.upper_start;
            for i in self.upper_start + 1..self.upper.len() {
                let s = lo.to(self.upper[i]);
                if s.lt(best) {
                    break;
                }
                best = s;
                best_i = i;
            }
            self.rect[0] = self.upper[best_i];
            self.rect[2] = lo;
            self.upper_start = best_i;
            let mut end = self.lower.len();
            while end >= self.lower_start + 2 && cross(self.lower[end - 2], self.lower[end - 1], lo) >= 0 {
                end -= 1;
            }
            self.lower.truncate(end);
            self.lower.push(lo);
        }

        self.points += 1;
        true
    }

    /// A line within `eps` of every point of the current segment (up to
    /// floating-point rounding, which the caller verifies), with a
    /// non-negative slope. Must not be called on an empty segment.
    pub fn fit(&self) -> Fitted {
        if self.points <= 1 {
            return Fitted { first_x: self.first_x, slope: 0.0, intercept: self.first_y as f64 };
        }
        let x0 = i128::from(self.first_x);
        // Both extreme lines are feasible; so is every convex combination of
        // them (the feasible set is convex in (slope, intercept)).
        let (s_min, v_min) = line_at(self.rect[0], self.rect[2], x0);
        let (s_max, v_max) = line_at(self.rect[1], self.rect[3], x0);
        if s_min + s_max >= 0.0 {
            Fitted { first_x: self.first_x, slope: (s_min + s_max) * 0.5, intercept: (v_min + v_max) * 0.5 }
        } else {
            // The data is non-decreasing, so a horizontal feasible line exists
            // (s_max >= 0 > s_min); take the combination with slope zero.
            let t = if s_max > s_min { -s_min / (s_max - s_min) } else { 1.0 };
            Fitted { first_x: self.first_x, slope: 0.0, intercept: t * v_max + (1.0 - t) * v_min }
        }
    }
}

/// Slope of the line through `a` and `b` (`a.x < b.x`) and its value at `x0`.
fn line_at(a: HullPoint, b: HullPoint, x0: i128) -> (f64, f64) {
    let s = a.to(b);
    let slope = s.dy as f64 / s.dx as f64;
    // value at x0 = a.y - dy * (a.x - x0) / dx, computed exactly up to the final
    // division: |dy| < 2^62 and |a.x - x0| < 2^64, so the product fits in i128.
    let num = s.dy * (a.x - x0);
    let value = a.y as f64 - num as f64 / s.dx as f64;
    (slope, value)
}

/// The prediction every index level uses, at build-time verification and at
/// query time alike (the same function, so verification is exact): the rounded
/// value of the line at `dx = x - first_x`. Monotone non-decreasing in `dx` for
/// a finite non-negative slope, because each floating-point step is.
#[inline(always)]
pub(crate) fn predict(slope: f64, intercept: f64, dx: u64) -> i64 {
    // `as` saturates (and maps NaN to 0); truncation of `v + 0.5` is rounding
    // for non-negative values and still monotone for negative ones.
    (intercept + slope * dx as f64 + 0.5) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_feasible(points: &[(u64, u64)], f: &Fitted, eps: i64) -> bool {
        points.iter().all(|&(x, y)| {
            let p = predict(f.slope, f.intercept, x - f.first_x);
            (p - y as i64).abs() <= eps
        })
    }

    #[test]
    fn single_point_is_exact() {
        let mut m = OptimalPla::default();
        m.reset(4);
        assert!(m.add(7, 3));
        let f = m.fit();
        assert_eq!(f.slope, 0.0);
        assert_eq!(predict(f.slope, f.intercept, 0), 3);
    }

    #[test]
    fn collinear_points_form_one_segment() {
        let mut m = OptimalPla::default();
        m.reset(1);
        let pts: Vec<(u64, u64)> = (0..1000).map(|i| (10 * i + 5, i)).collect();
        for &(x, y) in &pts {
            assert!(m.add(x, y));
        }
        let f = m.fit();
        assert!(brute_feasible(&pts, &f, 1));
    }

    #[test]
    fn step_breaks_segment() {
        let mut m = OptimalPla::default();
        m.reset(2);
        // Flat run, then a jump of 100 positions within one x step.
        for i in 0..10 {
            assert!(m.add(i * 1000, 0));
        }
        assert!(!m.add(9001, 100));
        let f = m.fit();
        let pts: Vec<(u64, u64)> = (0..10).map(|i| (i * 1000, 0)).collect();
        assert!(brute_feasible(&pts, &f, 2));
    }

    #[test]
    fn huge_keys() {
        let mut m = OptimalPla::default();
        m.reset(3);
        let base = u64::MAX - 10_000;
        let pts: Vec<(u64, u64)> = (0..5000).map(|i| (base + 2 * i, i)).collect();
        for &(x, y) in &pts {
            assert!(m.add(x, y));
        }
        assert!(brute_feasible(&pts, &m.fit(), 3));
    }
}
