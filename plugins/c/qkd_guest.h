/*
 * qkd_guest.h — the guest side of the qkdkms step plugin ABI (plugins/ABI.md)
 * for freestanding C compiled by clang for wasm32. It is the C counterpart of
 * the Go SDK (plugins/sdk): it implements the six qkd_* exports, a bump
 * allocator over linear memory, the result blob, the little-endian wire codec
 * (with wire.Reader's error texts), bit vectors, SHA-256, Go's ChaCha8 and
 * bits.SeedBytes. A plugin includes it once (header-only, one translation
 * unit) and defines two functions:
 *
 *   int plugin_new(int role, qkd_bytes params, qkd_bytes seed);
 *   int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res);
 *
 * Both return QKD_OK, or qkd_fail("message") on error. plugin_step fills res
 * (output and message written with qkd_writer, metrics cumulative).
 *
 * Build flags: plugins/c/build.sh. No libc: memset/memcpy/memmove are
 * defined here on top of the bulk-memory instructions.
 */
#ifndef QKD_GUEST_H
#define QKD_GUEST_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef signed char int8_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned long size_t;
typedef long ptrdiff_t;
#define NULL ((void *)0)

#define QKD_EXPORT(name) __attribute__((export_name(name), visibility("default")))
#define QKD_OK 0
#define QKD_ERR 1
#define QKD_ALICE 0
#define QKD_BOB 1

/* ---- memory -------------------------------------------------------------- */

void *memset(void *d, int c, size_t n) {
	__builtin_memset(d, c, n);
	return d;
}
void *memcpy(void *restrict d, const void *restrict s, size_t n) {
	__builtin_memcpy(d, s, n);
	return d;
}
void *memmove(void *d, const void *s, size_t n) {
	__builtin_memmove(d, s, n);
	return d;
}

extern unsigned char __heap_base;
static uint32_t qkd_brk; /* next free byte; 0 until first use */
static uint32_t qkd_top; /* highest qkd_brk so far: memory above it is untouched */

/* qkd_malloc returns 16-byte-aligned zeroed memory, or NULL when the memory
 * limit is reached. Memory is never returned except by qkd_free of the most
 * recent allocation: an instance lives for one step of one session. */
static void *qkd_malloc(size_t n) {
	if (qkd_brk == 0)
		qkd_brk = ((uint32_t)(size_t)&__heap_base + 15u) & ~15u;
	uint64_t end = (uint64_t)qkd_brk + (((uint64_t)n + 15u) & ~15ull);
	if (end > 0xFFFFFFF0ull)
		return NULL;
	uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) << 16;
	if (end > have) {
		uint64_t pages = (end - have + 65535u) >> 16;
		if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1)
			return NULL;
	}
	void *p = (void *)(size_t)qkd_brk;
	/* memory never handed out is zero (WebAssembly zero-fills it); only a
	 * rolled-back region below qkd_top needs clearing. Not writing the rest
	 * also leaves untouched the pages a large allocation never uses. */
	if (qkd_brk < qkd_top)
		__builtin_memset(p, 0, qkd_top - qkd_brk < n ? qkd_top - qkd_brk : n);
	qkd_brk = (uint32_t)end;
	if (qkd_brk > qkd_top)
		qkd_top = qkd_brk;
	return p;
}

static void qkd_free(void *p, size_t n) {
	if ((uint32_t)(size_t)p + ((n + 15u) & ~15u) == qkd_brk)
		qkd_brk = (uint32_t)(size_t)p;
}

/* ---- byte strings, reader, writer ----------------------------------------- */

typedef struct {
	const uint8_t *p;
	uint32_t n;
} qkd_bytes;

/* qkd_reader is sticky: after the first error every read returns 0. The
 * first failed read is remembered (need bytes wanted, have left) for
 * qkd_r_error, which words it as plugins/steps/wire does. */
typedef struct {
	const uint8_t *p;
	uint32_t n;
	int err;
	uint32_t need, have;
} qkd_reader;

static qkd_reader qkd_read(qkd_bytes b) {
	qkd_reader r = {b.p, b.n, 0, 0, 0};
	return r;
}
static int qkd_need(qkd_reader *r, uint32_t k) {
	if (r->err || r->n < k) {
		if (!r->err)
			r->need = k, r->have = r->n;
		r->err = 1;
		return 0;
	}
	return 1;
}
static uint8_t qkd_r_u8(qkd_reader *r) {
	if (!qkd_need(r, 1))
		return 0;
	uint8_t x = r->p[0];
	r->p += 1, r->n -= 1;
	return x;
}
static uint32_t qkd_le32(const uint8_t *p) {
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t qkd_le64(const uint8_t *p) { return (uint64_t)qkd_le32(p) | (uint64_t)qkd_le32(p + 4) << 32; }
static uint32_t qkd_r_u32(qkd_reader *r) {
	if (!qkd_need(r, 4))
		return 0;
	uint32_t x = qkd_le32(r->p);
	r->p += 4, r->n -= 4;
	return x;
}
static uint64_t qkd_r_u64(qkd_reader *r) {
	if (!qkd_need(r, 8))
		return 0;
	uint64_t x = qkd_le64(r->p);
	r->p += 8, r->n -= 8;
	return x;
}
static double qkd_r_f64(qkd_reader *r) {
	uint64_t u = qkd_r_u64(r);
	double d;
	__builtin_memcpy(&d, &u, 8);
	return d;
}
/* qkd_r_raw returns the next k bytes (aliasing the input) or NULL. */
static const uint8_t *qkd_r_raw(qkd_reader *r, uint32_t k) {
	if (!qkd_need(r, k))
		return NULL;
	const uint8_t *p = r->p;
	r->p += k, r->n -= k;
	return p;
}
/* qkd_r_done: 0 when everything was read without error and nothing is left. */
static int qkd_r_done(const qkd_reader *r) { return r->err || r->n != 0; }

/* qkd_utoa writes x in decimal at p (no terminator) and returns the end. */
static char *qkd_utoa(char *p, uint64_t x) {
	char t[20];
	int k = 0;
	do
		t[k++] = (char)('0' + x % 10), x /= 10;
	while (x);
	while (k)
		*p++ = t[--k];
	return p;
}

/* qkd_r_error is the text of wire.Reader.Done()'s error, "<nil>" when
 * there is none (as Go's %v of a nil error), written into buf. */
static const char *qkd_r_error(const qkd_reader *r, char buf[80]) {
	static const char pre[] = "wire: malformed buffer: ";
	char *p = buf;
	if (!r->err && r->n == 0)
		return "<nil>";
	for (const char *s = pre; *s; s++)
		*p++ = *s;
	if (r->err) {
		for (const char *s = "need "; *s; s++)
			*p++ = *s;
		p = qkd_utoa(p, r->need);
		for (const char *s = " bytes, have "; *s; s++)
			*p++ = *s;
		p = qkd_utoa(p, r->have);
	} else {
		p = qkd_utoa(p, r->n);
		for (const char *s = " trailing bytes"; *s; s++)
			*p++ = *s;
	}
	*p = 0;
	return buf;
}

typedef struct {
	uint8_t *p;
	uint32_t n, cap;
	int err; /* out of memory */
} qkd_writer;

static void qkd_w_grow(qkd_writer *w, uint32_t k) {
	if (w->err)
		return;
	if (w->n + k <= w->cap)
		return;
	uint32_t c = w->cap ? w->cap * 2 : 64;
	while (c < w->n + k)
		c *= 2;
	uint8_t *q = qkd_malloc(c);
	if (!q) {
		w->err = 1;
		return;
	}
	if (w->n)
		__builtin_memcpy(q, w->p, w->n);
	w->p = q, w->cap = c;
}
/* qkd_w_reserve makes room for k more bytes up front (one allocation). */
static void qkd_w_reserve(qkd_writer *w, uint32_t k) { qkd_w_grow(w, k); }
static void qkd_w_raw(qkd_writer *w, const void *b, uint32_t k) {
	if (w->err || w->n + k > w->cap) /* only then the call */
		qkd_w_grow(w, k);
	if (w->err)
		return;
	if (k)
		__builtin_memcpy(w->p + w->n, b, k);
	w->n += k;
}
static void qkd_w_u8(qkd_writer *w, uint8_t x) { qkd_w_raw(w, &x, 1); }
static void qkd_w_u32(qkd_writer *w, uint32_t x) {
	uint8_t b[4] = {(uint8_t)x, (uint8_t)(x >> 8), (uint8_t)(x >> 16), (uint8_t)(x >> 24)};
	qkd_w_raw(w, b, 4);
}
static void qkd_w_u64(qkd_writer *w, uint64_t x) {
	qkd_w_u32(w, (uint32_t)x);
	qkd_w_u32(w, (uint32_t)(x >> 32));
}
static void qkd_w_f64(qkd_writer *w, double d) {
	uint64_t u;
	__builtin_memcpy(&u, &d, 8);
	qkd_w_u64(w, u);
}
static void qkd_w_bytes(qkd_writer *w, const void *b, uint32_t k) {
	qkd_w_u32(w, k);
	qkd_w_raw(w, b, k);
}

/* ---- bit vectors (plugins/steps/bits: bit i in word i/64 at bit i%64; as
 * bytes, byte i/8 bit i%8; bits beyond n are zero) ------------------------- */

typedef struct {
	uint64_t *w;
	uint32_t n;
} qkd_vec;

static uint32_t qkd_words(uint32_t n) { return (n + 63) / 64; }

static qkd_vec qkd_vec_new(uint32_t n) {
	qkd_vec v = {qkd_malloc((size_t)qkd_words(n) * 8 + 8), n};
	return v;
}

/* qkd_vec_from_bytes: ceil(n/8) bytes into a vector; bits beyond n are
 * cleared, as bits.FromBytes does (not an error). -1 out of memory, else 0. */
static int qkd_vec_from_bytes(qkd_vec *v, const uint8_t *b, uint32_t n) {
	*v = qkd_vec_new(n);
	if (!v->w)
		return -1;
	uint32_t nb = (n + 7) / 8;
	__builtin_memcpy(v->w, b, nb); /* little-endian: bytes are the words */
	if (n % 64)
		v->w[n / 64] &= (1ull << (n % 64)) - 1;
	return 0;
}

/* qkd_r_vec reads a wire vec (u32 n, ceil(n/8) bytes) into v. */
static void qkd_r_vec(qkd_reader *r, qkd_vec *v) {
	uint32_t n = qkd_r_u32(r);
	const uint8_t *b = qkd_r_raw(r, (uint32_t)(((uint64_t)n + 7) / 8));
	if (r->err) {
		v->w = NULL, v->n = 0;
		return;
	}
	if (qkd_vec_from_bytes(v, b, n) != 0)
		r->err = 1;
}

static void qkd_w_vec(qkd_writer *w, qkd_vec v) {
	qkd_w_u32(w, v.n);
	qkd_w_raw(w, v.w, (v.n + 7) / 8);
}

/* qkd_word_at is word w (bits 64w … 64w+63) of a bit string stored as nb
 * bytes (byte i/8 bit i%8), read in place; bytes past nb read as zero. */
static uint64_t qkd_word_at(const uint8_t *b, uint32_t nb, uint32_t w) {
	uint64_t x = 0;
	uint32_t off = w * 8;
	if (off + 8 <= nb)
		__builtin_memcpy(&x, b + off, 8);
	else if (off < nb)
		__builtin_memcpy(&x, b + off, nb - off);
	return x;
}

/* qkd_w_vec_bytes writes a wire vec of n bits from ceil(n/8) bytes b (read
 * in place, not a qkd_vec), bits beyond n cleared: what wire.Writer.Vec
 * writes for bits.FromBytes(b, n). */
static void qkd_w_vec_bytes(qkd_writer *w, const uint8_t *b, uint32_t n) {
	uint32_t nb = (uint32_t)(((uint64_t)n + 7) / 8);
	qkd_w_u32(w, n);
	qkd_w_raw(w, b, nb);
	if (n % 8 && !w->err)
		w->p[w->n - 1] &= (uint8_t)((1u << (n % 8)) - 1);
}

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------- */

typedef struct {
	uint32_t h[8];
	uint8_t buf[64];
	uint64_t len;
} qkd_sha256;

static const uint32_t qkd_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t qkd_ror(uint32_t x, int k) { return x >> k | x << (32 - k); }

static void qkd_sha256_init(qkd_sha256 *s) {
	static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
	                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	for (int i = 0; i < 8; i++)
		s->h[i] = iv[i];
	s->len = 0;
}

static void qkd_sha256_block(qkd_sha256 *s, const uint8_t *p) {
	uint32_t w[64];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = qkd_ror(w[i - 15], 7) ^ qkd_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = qkd_ror(w[i - 2], 17) ^ qkd_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (qkd_ror(e, 6) ^ qkd_ror(e, 11) ^ qkd_ror(e, 25)) + ((e & f) ^ (~e & g)) + qkd_sha256_k[i] + w[i];
		uint32_t t2 = (qkd_ror(a, 2) ^ qkd_ror(a, 13) ^ qkd_ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void qkd_sha256_write(qkd_sha256 *s, const void *data, uint32_t n) {
	const uint8_t *p = data;
	uint32_t have = (uint32_t)(s->len % 64);
	s->len += n;
	while (n > 0) {
		uint32_t k = 64 - have < n ? 64 - have : n;
		__builtin_memcpy(s->buf + have, p, k);
		have += k, p += k, n -= k;
		if (have == 64) {
			qkd_sha256_block(s, s->buf);
			have = 0;
		}
	}
}

static void qkd_sha256_sum(qkd_sha256 *s, uint8_t out[32]) {
	uint64_t bitlen = s->len * 8;
	uint8_t pad = 0x80, zero = 0;
	qkd_sha256_write(s, &pad, 1);
	while (s->len % 64 != 56)
		qkd_sha256_write(s, &zero, 1);
	uint8_t l[8];
	for (int i = 0; i < 8; i++)
		l[i] = (uint8_t)(bitlen >> (56 - 8 * i));
	qkd_sha256_write(s, l, 8);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(s->h[i] >> 24), out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8), out[4 * i + 3] = (uint8_t)s->h[i];
	}
}

/* qkd_label_sha256: SHA-256(label, 0, seed), how plugins/steps/bits keys
 * its generators (bits.NewRNG, bits.Stream). */
static void qkd_label_sha256(const char *label, const uint8_t *seed, uint32_t seedlen, uint8_t out[32]) {
	qkd_sha256 h;
	uint8_t zero = 0;
	uint32_t ll = 0;
	while (label[ll])
		ll++;
	qkd_sha256_init(&h);
	qkd_sha256_write(&h, label, ll);
	qkd_sha256_write(&h, &zero, 1);
	qkd_sha256_write(&h, seed, seedlen);
	qkd_sha256_sum(&h, out);
}

/* ---- Go's math/rand/v2 ChaCha8 (internal/chacha8rand) and bits.Stream -----
 * Go's ChaCha8Rand runs ChaCha8 with the key, the block counter in word 12
 * and a zero nonce, four blocks at a time; it outputs words 0–3 and 12–15
 * without the feed-forward and words 4–11 with it, and interleaves the four
 * blocks word by word: 32-bit word m of a four-block chunk is word m/4 of
 * block m%4 — one SIMD128 vector per row, a block per lane. Chunks use
 * counters 0, 4, 8, 12; the last four 64-bit values of the fourth chunk are
 * not output but become the key of the next sixteen blocks. Read takes the
 * 64-bit values little-endian, so the output is the chunks' bytes. */

typedef uint32_t qkd_u32x4 __attribute__((vector_size(16)));

#define QKD_ROTL4(x, k) ((x) << (k) | (x) >> (32 - (k)))
#define QKD_QR4(a, b, c, d)                                                                                            \
	(a += b, d ^= a, d = QKD_ROTL4(d, 16), c += d, b ^= c, b = QKD_ROTL4(b, 12), a += b, d ^= a,                   \
	 d = QKD_ROTL4(d, 8), c += d, b ^= c, b = QKD_ROTL4(b, 7))

/* qkd_chacha8_chunk computes the four interleaved blocks counter…counter+3
 * into out[16] (row r of the four blocks in the four lanes). */
static void qkd_chacha8_chunk(const uint32_t key[8], uint32_t counter, qkd_u32x4 out[16]) {
	qkd_u32x4 x[16], k[8];
	for (int i = 0; i < 8; i++)
		k[i] = (qkd_u32x4){key[i], key[i], key[i], key[i]};
	x[0] = (qkd_u32x4){0x61707865, 0x61707865, 0x61707865, 0x61707865};
	x[1] = (qkd_u32x4){0x3320646e, 0x3320646e, 0x3320646e, 0x3320646e};
	x[2] = (qkd_u32x4){0x79622d32, 0x79622d32, 0x79622d32, 0x79622d32};
	x[3] = (qkd_u32x4){0x6b206574, 0x6b206574, 0x6b206574, 0x6b206574};
	for (int i = 0; i < 8; i++)
		x[4 + i] = k[i];
	x[12] = (qkd_u32x4){counter, counter + 1, counter + 2, counter + 3};
	x[13] = x[14] = x[15] = (qkd_u32x4){0, 0, 0, 0};
	for (int round = 0; round < 4; round++) {
		QKD_QR4(x[0], x[4], x[8], x[12]), QKD_QR4(x[1], x[5], x[9], x[13]);
		QKD_QR4(x[2], x[6], x[10], x[14]), QKD_QR4(x[3], x[7], x[11], x[15]);
		QKD_QR4(x[0], x[5], x[10], x[15]), QKD_QR4(x[1], x[6], x[11], x[12]);
		QKD_QR4(x[2], x[7], x[8], x[13]), QKD_QR4(x[3], x[4], x[9], x[14]);
	}
	for (int r = 0; r < 16; r++)
		out[r] = r >= 4 && r < 12 ? x[r] + k[r - 4] : x[r];
}
#undef QKD_QR4
#undef QKD_ROTL4

/* qkd_chacha8_read fills out[0..n) as rand.NewChaCha8(seed).Read does. */
static void qkd_chacha8_read(const uint8_t seed[32], uint8_t *out, uint32_t n) {
	uint32_t key[8];
	qkd_u32x4 buf[16];
	for (int i = 0; i < 8; i++)
		key[i] = qkd_le32(seed + 4 * i);
	uint32_t ctr = 0; /* counter of the current chunk */
	while (n > 0) {
		qkd_chacha8_chunk(key, ctr, buf);
		uint32_t avail = ctr == 12 ? 224 : 256; /* bytes this chunk outputs */
		uint32_t k = n < avail ? n : avail;
		__builtin_memcpy(out, buf, k); /* little-endian: the words' bytes */
		out += k, n -= k;
		if (ctr == 12) {
			for (int i = 0; i < 4; i++) /* reseed from the last four values */
				key[i] = buf[14][i], key[4 + i] = buf[15][i];
			ctr = 0;
		} else {
			ctr += 4;
		}
	}
}

/* qkd_stream: bits.Stream(seed, label, n) into out — n bytes of ChaCha8
 * keyed by SHA-256(label, 0, seed). */
static void qkd_stream(qkd_bytes seed, const char *label, uint8_t *out, uint32_t n) {
	uint8_t key[32];
	qkd_label_sha256(label, seed.p, seed.n, key);
	qkd_chacha8_read(key, out, n);
}

/* qkd_seed_bytes: bits.SeedBytes(seed, label, n) — the host's seed itself
 * (not copied) when it holds n bytes, else its expansion (qkd_stream) in a
 * new allocation; NULL when out of memory. */
static const uint8_t *qkd_seed_bytes(qkd_bytes seed, const char *label, uint32_t n) {
	if (seed.n >= n)
		return seed.p;
	uint8_t *out = qkd_malloc(n);
	if (out)
		qkd_stream(seed, label, out, n);
	return out;
}

/* ---- the ABI -------------------------------------------------------------- */

typedef struct {
	qkd_writer out, msg; /* output and message bytes */
	int done, has_msg;
	uint64_t leaked, disclosed, corrected;
	uint32_t rounds;
} qkd_result;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed);
static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res);

static qkd_writer qkd_blob; /* the last call's result blob */
static int qkd_created;

/* qkd_fail sets the error message as the result blob and returns QKD_ERR. */
static int qkd_fail(const char *msg) {
	qkd_blob.n = 0;
	uint32_t k = 0;
	while (msg[k])
		k++;
	qkd_w_raw(&qkd_blob, msg, k);
	return QKD_ERR;
}

/* qkd_failf is qkd_fail with a message formatted from fmt: %u an unsigned
 * (uint32_t) in decimal, %s a string, %% a percent sign; nothing else. So
 * the C builds can word their errors exactly as the Go steps do. */
__attribute__((format(printf, 1, 2))) static int qkd_failf(const char *fmt, ...) {
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	qkd_blob.n = 0;
	for (const char *f = fmt; *f; f++) {
		if (*f != '%' || !f[1]) {
			qkd_w_raw(&qkd_blob, f, 1);
			continue;
		}
		f++;
		if (*f == 'u') {
			char t[20];
			qkd_w_raw(&qkd_blob, t, (uint32_t)(qkd_utoa(t, __builtin_va_arg(ap, unsigned)) - t));
		} else if (*f == 's') {
			const char *s = __builtin_va_arg(ap, const char *);
			uint32_t k = 0;
			while (s[k])
				k++;
			qkd_w_raw(&qkd_blob, s, k);
		} else {
			qkd_w_raw(&qkd_blob, f, 1);
		}
	}
	__builtin_va_end(ap);
	return QKD_ERR;
}

QKD_EXPORT("qkd_abi_version") int qkd_abi_version(void) { return 1; }

QKD_EXPORT("qkd_alloc") uint32_t qkd_alloc(uint32_t size) {
	static uint8_t empty[16]; /* a zero-length string may have any pointer (ABI.md §3) */
	if (size == 0)
		return (uint32_t)(size_t)empty;
	void *p = qkd_malloc(size);
	return (uint32_t)(size_t)p; /* 0 (out of memory): the host's write fails */
}

QKD_EXPORT("qkd_new") int qkd_new(int role, uint32_t pp, uint32_t pl, uint32_t sp, uint32_t sl) {
	if (role != QKD_ALICE && role != QKD_BOB)
		return qkd_fail("bad role");
	qkd_bytes params = {(const uint8_t *)(size_t)pp, pl}, seed = {(const uint8_t *)(size_t)sp, sl};
	qkd_blob.n = 0;
	int st = plugin_new(role, params, seed);
	if (st == QKD_OK) {
		qkd_created = 1;
		qkd_blob.n = 0;
	}
	return st;
}

QKD_EXPORT("qkd_step") int qkd_step(uint32_t ip, uint32_t il, uint32_t pp, uint32_t pl, uint32_t flags) {
	if (!qkd_created)
		return qkd_fail("qkd_step before qkd_new");
	qkd_bytes in = {(const uint8_t *)(size_t)ip, il}, peer = {(const uint8_t *)(size_t)pp, pl};
	qkd_result r;
	__builtin_memset(&r, 0, sizeof r);
	int st = plugin_step(in, peer, flags & 1, &r);
	if (st != QKD_OK)
		return st;
	if (r.out.err || r.msg.err)
		return qkd_fail("out of memory");
	qkd_blob.n = 0;
	qkd_w_reserve(&qkd_blob, 40 + r.out.n + r.msg.n);
	qkd_w_u8(&qkd_blob, (uint8_t)((r.done ? 1 : 0) | (r.has_msg ? 2 : 0)));
	qkd_w_u8(&qkd_blob, 0), qkd_w_u8(&qkd_blob, 0), qkd_w_u8(&qkd_blob, 0);
	qkd_w_u64(&qkd_blob, r.leaked);
	qkd_w_u64(&qkd_blob, r.disclosed);
	qkd_w_u64(&qkd_blob, r.corrected);
	qkd_w_u32(&qkd_blob, r.rounds);
	qkd_w_bytes(&qkd_blob, r.out.p, r.out.n);
	qkd_w_bytes(&qkd_blob, r.msg.p, r.has_msg ? r.msg.n : 0);
	if (qkd_blob.err)
		return QKD_ERR; /* the blob itself is unusable: the host reports a malformed result */
	return QKD_OK;
}

QKD_EXPORT("qkd_result_ptr") uint32_t qkd_result_ptr(void) { return (uint32_t)(size_t)qkd_blob.p; }
QKD_EXPORT("qkd_result_len") uint32_t qkd_result_len(void) { return qkd_blob.n; }

#endif
