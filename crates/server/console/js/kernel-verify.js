// Verifies a kernel file in the browser, as a device would (docs/format/kernel.md): the
// header, the manifest's ed25519 signature under the server's published kernel key
// (GET /v1/kernel-signing-key; WebCrypto Ed25519), every section's SHA-256, alignment,
// zero padding, the exact length, expiry, and the whole file's SHA-256 against the
// download's ETag. Stops at the first problem, naming the offset.

const MAGIC = 'KZKERNEL';
const HEADER = 32;
const SIGNATURE = 64;
const ALIGN = 64;
const MAX_MANIFEST = 16 << 20;
const SIGNED_PREFIX = 'KZKERNEL manifest v1\n';

function hex(buf) {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function unhex(s) {
  if (!/^([0-9a-f]{2})+$/i.test(s)) throw new Error('the signing key is not hex');
  return Uint8Array.from(s.match(/../g), (x) => parseInt(x, 16));
}

async function sha256(bytes) {
  return hex(await crypto.subtle.digest('SHA-256', bytes));
}

class Refused extends Error {
  constructor(offset, reason) {
    super(`at byte ${offset}: ${reason}`);
    this.offset = offset;
  }
}

function zeros(b, from, to) {
  for (let i = from; i < to; i += 1) if (b[i] !== 0) throw new Refused(i, 'padding byte is not zero (altered)');
}

/**
 * Checks `buffer` (an ArrayBuffer of the kernel file) under `key` (`{key_id, public_key}`);
 * `etag` (the download's, quoted SHA-256) is compared too when given. Returns
 * `{ok, checks: [text], problem?, manifest?}`.
 */
export async function verifyKernel(buffer, key, etag) {
  const b = new Uint8Array(buffer);
  const checks = [];
  const dv = new DataView(buffer);
  try {
    if (b.length < HEADER) throw new Refused(0, `file is ${b.length} bytes, shorter than the ${HEADER}-byte header`);
    if (new TextDecoder().decode(b.subarray(0, 8)) !== MAGIC) throw new Refused(0, 'bad magic: not a Kernelize kernel');
    const version = dv.getUint32(8, true);
    if (version !== 1 && version !== 2) throw new Refused(8, `unsupported format version ${version} (this console reads 1 and 2)`);
    if (dv.getUint32(12, true) !== 0) throw new Refused(12, 'unknown flags');
    const manifestLen = dv.getUint32(16, true);
    if (manifestLen > MAX_MANIFEST) throw new Refused(16, `manifest length ${manifestLen} is over ${MAX_MANIFEST}`);
    if (dv.getUint32(20, true) !== SIGNATURE) throw new Refused(20, 'signature length is not 64');
    zeros(b, 24, 32);
    const sigAt = HEADER + manifestLen;
    const headEnd = sigAt + SIGNATURE;
    if (b.length < headEnd) throw new Refused(16, `file is ${b.length} bytes, manifest and signature need ${headEnd}`);
    checks.push(`Header: format ${version}, manifest ${manifestLen} bytes, signature ${SIGNATURE} bytes.`);

    const pk = unhex(key.public_key);
    const keyId = (await sha256(pk)).slice(0, 16);
    if (keyId !== key.key_id) throw new Error(`the published key's id ${key.key_id} is not its SHA-256 prefix ${keyId}`);
    const json = b.subarray(HEADER, sigAt);
    const message = new Uint8Array(SIGNED_PREFIX.length + json.length);
    message.set(new TextEncoder().encode(SIGNED_PREFIX), 0);
    message.set(json, SIGNED_PREFIX.length);
    const cryptoKey = await crypto.subtle.importKey('raw', pk, { name: 'Ed25519' }, false, ['verify']);
    const good = await crypto.subtle.verify({ name: 'Ed25519' }, cryptoKey, b.slice(sigAt, headEnd), message);
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
    } catch (e) {
      if (!good) throw new Refused(sigAt, `the manifest's signature does not verify under key ${key.key_id}`);
      throw new Refused(HEADER, `manifest: ${e.message}`);
    }
    if (!good) {
      const claimed = manifest && manifest.key_id;
      throw new Refused(sigAt, claimed && claimed !== key.key_id ? `signed by key ${claimed}, not by the server's key ${key.key_id}` : `the manifest's signature does not verify under key ${key.key_id}`);
    }
    checks.push(`Signature: ed25519 over the manifest verifies under the server's kernel key ${key.key_id}.`);
    if (manifest.format_version !== version) throw new Refused(8, `header version ${version} differs from the manifest's ${manifest.format_version}`);
    if (manifest.file_bytes !== b.length) throw new Refused(Math.min(b.length, manifest.file_bytes), `file is ${b.length} bytes, the manifest says ${manifest.file_bytes}`);
    let at = headEnd;
    const names = new Set();
    for (const sec of manifest.sections) {
      if (names.has(sec.name)) throw new Refused(HEADER, `section ${sec.name} is listed twice`);
      names.add(sec.name);
      const end = sec.offset + sec.len;
      if (!(sec.offset >= at && sec.offset % ALIGN === 0 && end <= b.length)) throw new Refused(HEADER, `section ${sec.name} at ${sec.offset}+${sec.len} is misplaced`);
      zeros(b, at, sec.offset);
      if ((await sha256(b.subarray(sec.offset, end))) !== sec.sha256) throw new Refused(sec.offset, `section ${sec.name} does not match its SHA-256 (altered)`);
      at = end;
    }
    zeros(b, at, b.length);
    checks.push(`Sections: all ${manifest.sections.length} match their SHA-256, aligned, padding zero, length exact (${b.length} bytes).`);
    if (manifest.expires !== null && manifest.expires !== undefined && manifest.expires * 1000 <= Date.now()) {
      throw new Refused(HEADER, `expired at ${new Date(manifest.expires * 1000).toISOString()}`);
    }
    checks.push(manifest.expires ? `Expiry: valid until ${new Date(manifest.expires * 1000).toISOString()}.` : 'Expiry: none.');
    if (etag) {
      const whole = await sha256(b);
      if (`"${whole}"` !== etag) throw new Error(`the file's SHA-256 ${whole} is not the download's ETag ${etag}`);
      checks.push(`File SHA-256 ${whole} equals the download's ETag.`);
    }
    return { ok: true, checks, manifest };
  } catch (e) {
    return { ok: false, checks, problem: e.message || String(e) };
  }
}
