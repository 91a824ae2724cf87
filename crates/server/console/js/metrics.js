// The Prometheus text format (what GET /metrics answers), parsed into samples, and the
// figures the overview shows: requests, their rate between two scrapes, latency quantiles
// estimated from the histogram buckets as Prometheus' histogram_quantile does.

/** Samples: `[{name, labels: {…}, value}]`. Comments and malformed lines are skipped. */
export function parse(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3])) !== null) labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    const value = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4]);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Sum of the samples called `name` whose labels pass `keep`. */
export function sum(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);
}

/**
 * The `q` quantile of histogram `base` (its `_bucket` series, summed over every other
 * label), interpolated linearly inside the bucket; null without observations.
 */
export function quantile(samples, base, q, keep = () => true) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${base}_bucket` || !keep(s.labels)) continue;
    const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  const buckets = [...byLe.entries()].sort((a, b) => a[0] - b[0]);
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + ((le - prevLe) * (rank - prevCount)) / inBucket : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** Per route: requests and mean latency (seconds), busiest first. */
export function routes(samples, prefix = 'kernelize_http_request_duration_seconds') {
  const rows = new Map();
  for (const s of samples) {
    const key = `${s.labels.method || ''} ${s.labels.route || ''}`;
    if (s.name === `${prefix}_count` || s.name === `${prefix}_sum`) {
      const r = rows.get(key) || { route: key, count: 0, sum: 0 };
      if (s.name.endsWith('_count')) r.count += s.value;
      else r.sum += s.value;
      rows.set(key, r);
    }
  }
  return [...rows.values()].map((r) => ({ ...r, mean: r.count ? r.sum / r.count : null })).sort((a, b) => b.count - a.count);
}
