/*
 * amplify.c — the amplify step (privacy amplification by Toeplitz hashing) as
 * a freestanding C plugin (plugins/ABI.md). It is bit for bit the Go step
 * plugins/steps/amplify: same output, same message, same metrics, an error
 * wherever Go errors. The protocol (amplify.go's package comment):
 *
 *   params: u32 ℓ ≥ 1; input: the reconciled key, a wire vec of n ≥ ℓ bits,
 *   n+ℓ−1 ≤ 2^26. Alice: the seed is the host's seed when it holds
 *   ceil((n+ℓ−1)/8) bytes, else its ChaCha8 expansion (bits.SeedBytes); she
 *   sends "u32 ℓ, seed bytes" (one round) and outputs y = T·x at once. Bob
 *   waits for that message, then outputs y. Output: a wire vec of ℓ bits.
 *   Leaked, disclosed, corrected = 0.
 *
 * T is the ℓ×n Toeplitz matrix T[i][j] = s[i−j+n−1]: y is bits n−1 … n+ℓ−2 of
 * the GF(2)[z] product s·x. It is computed exactly as in plugins/steps/
 * amplify/gf.go (whose comments explain the mathematics): bytes are elements
 * of GF(2^16), the byte-wise product is a polynomial product over GF(2^16)
 * computed with Lin–Chung–Han's additive FFT on Cantor's basis, in blocks
 * of 2^15 key bytes when the key is long. The wide levels of the transform
 * use SIMD128 table look-ups (i8x16.swizzle on 4-bit nibbles).
 */
#include <wasm_simd128.h>

#include "qkd_guest.h"

#define MAXLOG 26 /* n+ℓ−1 ≤ 2^26 bits, else a parameter error (as Go) */

/* ---- ChaCha8: Go's math/rand/v2 ChaCha8 (internal/chacha8rand) ----------- */

/* The generator keeps a 32-byte seed; each block call runs ChaCha8 on 4
 * interlaced blocks (counters c…c+3) and yields 32 words; after counter 12
 * the last 4 words become the next seed (and are not output). */
typedef struct {
	uint64_t buf[32], seed[4];
	uint32_t i, n, c;
} chacha8;

static uint32_t rotl32(uint32_t x, int k) { return x << k | x >> (32 - k); }

#define QR(a, b, c, d)                                                                                                 \
	do {                                                                                                           \
		a += b, d ^= a, d = rotl32(d, 16);                                                                     \
		c += d, b ^= c, b = rotl32(b, 12);                                                                     \
		a += b, d ^= a, d = rotl32(d, 8);                                                                      \
		c += d, b ^= c, b = rotl32(b, 7);                                                                      \
	} while (0)

static void chacha8_block(const uint64_t seed[4], uint64_t buf[32], uint32_t counter) {
	uint32_t b[16][4]; /* b[row][block], as Go's [16][4]uint32 view of buf */
	for (int i = 0; i < 4; i++) {
		b[0][i] = 0x61707865, b[1][i] = 0x3320646e, b[2][i] = 0x79622d32, b[3][i] = 0x6b206574;
		for (int k = 0; k < 4; k++) {
			b[4 + 2 * k][i] = (uint32_t)seed[k];
			b[5 + 2 * k][i] = (uint32_t)(seed[k] >> 32);
		}
		b[12][i] = counter + (uint32_t)i;
		b[13][i] = b[14][i] = b[15][i] = 0;
	}
	for (int i = 0; i < 4; i++) {
		uint32_t x0 = b[0][i], x1 = b[1][i], x2 = b[2][i], x3 = b[3][i], x4 = b[4][i], x5 = b[5][i];
		uint32_t x6 = b[6][i], x7 = b[7][i], x8 = b[8][i], x9 = b[9][i], x10 = b[10][i], x11 = b[11][i];
		uint32_t x12 = b[12][i], x13 = b[13][i], x14 = b[14][i], x15 = b[15][i];
		for (int r = 0; r < 4; r++) {
			QR(x0, x4, x8, x12);
			QR(x1, x5, x9, x13);
			QR(x2, x6, x10, x14);
			QR(x3, x7, x11, x15);
			QR(x0, x5, x10, x15);
			QR(x1, x6, x11, x12);
			QR(x2, x7, x8, x13);
			QR(x3, x4, x9, x14);
		}
		/* rows 4…11 are added to the input, the others kept as they are */
		b[0][i] = x0, b[1][i] = x1, b[2][i] = x2, b[3][i] = x3;
		b[4][i] += x4, b[5][i] += x5, b[6][i] += x6, b[7][i] += x7;
		b[8][i] += x8, b[9][i] += x9, b[10][i] += x10, b[11][i] += x11;
		b[12][i] = x12, b[13][i] = x13, b[14][i] = x14, b[15][i] = x15;
	}
	const uint32_t *w = &b[0][0];
	for (int k = 0; k < 32; k++)
		buf[k] = (uint64_t)w[2 * k] | (uint64_t)w[2 * k + 1] << 32;
}

static void chacha8_init(chacha8 *s, const uint8_t key[32]) {
	for (int k = 0; k < 4; k++)
		s->seed[k] = qkd_le64(key + 8 * k);
	chacha8_block(s->seed, s->buf, 0);
	s->c = 0, s->i = 0, s->n = 32;
}

static void chacha8_refill(chacha8 *s) {
	s->c += 4;
	if (s->c == 16) {
		for (int k = 0; k < 4; k++)
			s->seed[k] = s->buf[28 + k];
		s->c = 0;
	}
	chacha8_block(s->seed, s->buf, s->c);
	s->i = 0;
	s->n = s->c == 12 ? 28 : 32;
}

static uint64_t chacha8_u64(chacha8 *s) {
	while (s->i >= s->n)
		chacha8_refill(s);
	return s->buf[s->i++ & 31];
}

/* seed_bytes is bits.SeedBytes: nbytes of seed material, the host's seed if
 * long enough, else ChaCha8 keyed by SHA-256(label, 0, seed) read as a byte
 * stream (little-endian words). NULL when out of memory. */
static uint8_t *seed_bytes(qkd_bytes seed, const char *label, uint32_t nbytes) {
	uint8_t *out = qkd_malloc(nbytes + 8);
	if (!out)
		return NULL;
	if (seed.n >= nbytes) {
		if (nbytes)
			__builtin_memcpy(out, seed.p, nbytes);
		return out;
	}
	qkd_sha256 h;
	uint8_t key[32], zero = 0;
	uint32_t ll = 0;
	while (label[ll])
		ll++;
	qkd_sha256_init(&h);
	qkd_sha256_write(&h, label, ll);
	qkd_sha256_write(&h, &zero, 1);
	qkd_sha256_write(&h, seed.p, seed.n);
	qkd_sha256_sum(&h, key);
	chacha8 c;
	chacha8_init(&c, key);
	for (uint32_t i = 0; i < nbytes; i += 8) {
		uint64_t x = chacha8_u64(&c);
		__builtin_memcpy(out + i, &x, 8); /* out has 8 bytes of slack */
	}
	return out;
}

/* ---- GF(2^16) and the additive FFT (gf.go) ---------------------------------- */

#define GF_POLY 0x1002Du   /* z^16 + z^5 + z^3 + z^2 + 1, primitive */
#define GF_ORDER 65535u
#define ZERO_LOG (1u << 17) /* log of 0: sums with it index exp's zero tail */
#define MAX_K 16
#define NIB_N 2048 /* twiddles with nibble tables: every block of ≥ 32 elements */

/* Cantor's basis: β_0 = 1, β_i² + β_i = β_{i−1}. */
static const uint16_t cantor[16] = {0x0001, 0xacca, 0x3c0e, 0x163e, 0xc582, 0xed2e, 0x914c, 0x4012,
                                    0x6c98, 0x10d8, 0x6a72, 0xb900, 0xfdb8, 0xfb34, 0xff38, 0x991e};

typedef struct {
	uint32_t log[1 << 16];          /* log[a] base z, log[0] = ZERO_LOG */
	uint16_t exp[2 * ZERO_LOG + 8]; /* z^(i mod 65535) below 2·65535, then 0 */
	uint16_t tw[1 << 15];           /* tw[b] = ω(2b): the twiddle of block b of any level */
	uint32_t twlog[1 << 15];
	/* nib[b][2k], nib[b][2k+1]: low and high bytes of tw[b]·(v << 4k),
	 * v < 16, for the swizzle multiplication */
	v128_t nib[NIB_N][8];
} gf_tables;

static gf_tables *gf;

static uint16_t gf_mul(uint16_t a, uint16_t b) { return gf->exp[gf->log[a] + gf->log[b]]; }

static int gf_init(void) {
	if (gf)
		return 0;
	gf = qkd_malloc(sizeof *gf);
	if (!gf)
		return -1;
	uint32_t x = 1;
	for (uint32_t i = 0; i < GF_ORDER; i++) {
		gf->exp[i] = gf->exp[i + GF_ORDER] = (uint16_t)x;
		gf->log[x] = i;
		x <<= 1;
		if (x & 0x10000)
			x ^= GF_POLY;
	}
	gf->log[0] = ZERO_LOG;
	for (uint32_t b = 1; b < (1u << 15); b++)
		gf->tw[b] = gf->tw[b & (b - 1)] ^ cantor[__builtin_ctz(b) + 1];
	for (uint32_t b = 0; b < (1u << 15); b++)
		gf->twlog[b] = gf->log[gf->tw[b]];
	for (uint32_t b = 0; b < NIB_N; b++) {
		uint16_t p[16], t[16];
		for (int j = 0; j < 16; j++)
			p[j] = gf_mul(gf->tw[b], (uint16_t)(1u << j)); /* c·z^j */
		uint8_t *o = (uint8_t *)gf->nib[b];
		for (int k = 0; k < 4; k++) {
			t[0] = 0;
			for (int v = 1; v < 16; v++)
				t[v] = t[v & (v - 1)] ^ p[4 * k + __builtin_ctz((unsigned)v)];
			for (int v = 0; v < 16; v++) {
				o[32 * k + v] = (uint8_t)t[v];
				o[32 * k + 16 + v] = (uint8_t)(t[v] >> 8);
			}
		}
	}
	return 0;
}

/* capacity: the largest m+k for which the middle product of an
 * (m+k−1)-element sequence by a k-element one survives reduction modulo
 * s_K (gf.go). */
static uint32_t capacity(int K) { return (1u << K) + 1 - (1u << (K & (K - 1))); }

static uint64_t ld64(const uint16_t *p) {
	uint64_t x;
	__builtin_memcpy(&x, p, 8);
	return x;
}
static void st64(uint16_t *p, uint64_t x) { __builtin_memcpy(p, &x, 8); }

/* xor_into: dst[0..n) += src[0..n); dst below src if they overlap. */
static void xor_into(uint16_t *dst, const uint16_t *src, uint32_t n) {
	uint32_t i = 0;
	for (; i + 32 <= n; i += 32) {
		v128_t a0 = wasm_v128_load(src + i), a1 = wasm_v128_load(src + i + 8);
		v128_t a2 = wasm_v128_load(src + i + 16), a3 = wasm_v128_load(src + i + 24);
		wasm_v128_store(dst + i, wasm_v128_xor(wasm_v128_load(dst + i), a0));
		wasm_v128_store(dst + i + 8, wasm_v128_xor(wasm_v128_load(dst + i + 8), a1));
		wasm_v128_store(dst + i + 16, wasm_v128_xor(wasm_v128_load(dst + i + 16), a2));
		wasm_v128_store(dst + i + 24, wasm_v128_xor(wasm_v128_load(dst + i + 24), a3));
	}
	for (; i + 8 <= n; i += 8)
		wasm_v128_store(dst + i, wasm_v128_xor(wasm_v128_load(dst + i), wasm_v128_load(src + i)));
	for (; i < n; i++)
		dst[i] ^= src[i];
}

/* divide: the block a of 2h elements (h = 2^i) divided by s_i = x^h +
 * Σ_{j ⊊ i} x^(2^j) in place (quotient on top), in runs of the smallest
 * shift; undivide is its inverse. */
static void divide(uint16_t *a, int i) {
	if (i == 0)
		return;
	uint32_t h = 1u << i;
	int jmax = i & (i - 1);
	uint32_t L = h - (1u << jmax);
	for (uint32_t T = 2 * h; T > h; T -= L) {
		uint32_t lo = T - L > h ? T - L : h;
		for (int j = jmax;; j = (j - 1) & i) {
			uint32_t d = h - (1u << j);
			xor_into(a + lo - d, a + lo, T - lo);
			if (j == 0)
				break;
		}
	}
}

static void undivide(uint16_t *a, int i) {
	if (i == 0)
		return;
	uint32_t h = 1u << i;
	int jmax = i & (i - 1);
	uint32_t L = h - (1u << jmax);
	uint32_t runs = (h + L - 1) / L;
	for (uint32_t c = runs; c-- > 0;) {
		uint32_t T = 2 * h - c * L;
		uint32_t lo = T - L > h ? T - L : h;
		for (int j = jmax;; j = (j - 1) & i) {
			uint32_t d = h - (1u << j);
			xor_into(a + lo - d, a + lo, T - lo);
			if (j == 0)
				break;
		}
	}
}

/* mul16: 16 elements (two vectors) times the twiddle whose nibble tables
 * are t. The elements are split into their low and high bytes, each byte
 * into nibbles, and the 4 nibble products (2 bytes each) looked up. */
static void mul16(v128_t *a, v128_t *b, const v128_t *t) {
	v128_t lo = wasm_i8x16_shuffle(*a, *b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
	v128_t hi = wasm_i8x16_shuffle(*a, *b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
	v128_t m = wasm_i8x16_splat(0x0F);
	v128_t n0 = wasm_v128_and(lo, m), n1 = wasm_v128_and(wasm_u16x8_shr(lo, 4), m);
	v128_t n2 = wasm_v128_and(hi, m), n3 = wasm_v128_and(wasm_u16x8_shr(hi, 4), m);
	v128_t rl = wasm_v128_xor(wasm_v128_xor(wasm_i8x16_swizzle(t[0], n0), wasm_i8x16_swizzle(t[2], n1)),
	                          wasm_v128_xor(wasm_i8x16_swizzle(t[4], n2), wasm_i8x16_swizzle(t[6], n3)));
	v128_t rh = wasm_v128_xor(wasm_v128_xor(wasm_i8x16_swizzle(t[1], n0), wasm_i8x16_swizzle(t[3], n1)),
	                          wasm_v128_xor(wasm_i8x16_swizzle(t[5], n2), wasm_i8x16_swizzle(t[7], n3)));
	*a = wasm_i8x16_shuffle(rl, rh, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
	*b = wasm_i8x16_shuffle(rl, rh, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

/* butterfly: u += c·v, v += u for halves of h ≥ 16 elements, c = tw[b];
 * unbutterfly undoes it. */
static void butterfly(uint16_t *u, uint16_t *v, uint32_t h, uint32_t b) {
	if (b == 0) {
		xor_into(v, u, h);
		return;
	}
	const v128_t *t = gf->nib[b];
	for (uint32_t j = 0; j < h; j += 16) {
		v128_t x0 = wasm_v128_load(v + j), x1 = wasm_v128_load(v + j + 8);
		mul16(&x0, &x1, t);
		v128_t u0 = wasm_v128_xor(wasm_v128_load(u + j), x0), u1 = wasm_v128_xor(wasm_v128_load(u + j + 8), x1);
		wasm_v128_store(u + j, u0);
		wasm_v128_store(u + j + 8, u1);
		wasm_v128_store(v + j, wasm_v128_xor(wasm_v128_load(v + j), u0));
		wasm_v128_store(v + j + 8, wasm_v128_xor(wasm_v128_load(v + j + 8), u1));
	}
}

static void unbutterfly(uint16_t *u, uint16_t *v, uint32_t h, uint32_t b) {
	if (b == 0) {
		xor_into(v, u, h);
		return;
	}
	const v128_t *t = gf->nib[b];
	for (uint32_t j = 0; j < h; j += 16) {
		v128_t u0 = wasm_v128_load(u + j), u1 = wasm_v128_load(u + j + 8);
		v128_t x0 = wasm_v128_xor(wasm_v128_load(v + j), u0), x1 = wasm_v128_xor(wasm_v128_load(v + j + 8), u1);
		wasm_v128_store(v + j, x0);
		wasm_v128_store(v + j + 8, x1);
		mul16(&x0, &x1, t);
		wasm_v128_store(u + j, wasm_v128_xor(u0, x0));
		wasm_v128_store(u + j + 8, wasm_v128_xor(u1, x1));
	}
}

/* The last four levels on blocks of 16 elements held in four 64-bit words
 * of four elements (lane l = bits 16l…16l+15), as fwd16/inv16 in gf.go. */
#define LANE1 0xFFFF0000ull
#define LANE2 0xFFFF00000000ull
#define LANES02 0x0000FFFF0000FFFFull

static uint64_t mul_log(uint64_t x, uint32_t lc) { return gf->exp[gf->log[(uint16_t)x] + lc]; }
static uint64_t mul4(uint64_t x, uint32_t lc) {
	return mul_log(x, lc) | mul_log(x >> 16, lc) << 16 | mul_log(x >> 32, lc) << 32 | mul_log(x >> 48, lc) << 48;
}
static uint64_t undo1(uint64_t w) {
	w ^= w >> 16 & LANE2;
	return w ^ (w >> 16 & LANE1);
}
static uint64_t redo1(uint64_t w) {
	w ^= w >> 16 & LANE1;
	return w ^ (w >> 16 & LANE2);
}

/* levels 1 and 0 on the 4 elements of w, the level-1 block being b */
static uint64_t fwd4(uint64_t w, uint32_t b) {
	uint32_t c = gf->twlog[b];
	w ^= mul_log(w >> 32, c) | mul_log(w >> 48, c) << 16;
	w ^= w << 32;
	uint32_t c0 = gf->twlog[2 * b], c1 = gf->twlog[2 * b + 1];
	w ^= mul_log(w >> 16, c0) | mul_log(w >> 48, c1) << 32;
	return w ^ (w & LANES02) << 16;
}

static uint64_t inv4(uint64_t w, uint32_t b) {
	w ^= (w & LANES02) << 16;
	uint32_t c0 = gf->twlog[2 * b], c1 = gf->twlog[2 * b + 1];
	w ^= mul_log(w >> 16, c0) | mul_log(w >> 48, c1) << 32;
	w ^= w << 32;
	uint32_t c = gf->twlog[b];
	return w ^ (mul_log(w >> 32, c) | mul_log(w >> 48, c) << 16);
}

static void fwd16(uint16_t *a, uint32_t base) {
	uint64_t w0 = ld64(a), w1 = ld64(a + 4), w2 = ld64(a + 8), w3 = ld64(a + 12);
	/* divide by s_3 = x^8+x^4+x^2+x, the halves by s_2, the quarters by s_1 */
	w2 ^= w3 ^ w3 >> 32 ^ w3 >> 48;
	w1 ^= w3 << 32 ^ w3 << 16;
	w1 ^= w2 ^ w2 >> 32 ^ w2 >> 48;
	w0 ^= w2 << 32 ^ w2 << 16;
	w1 ^= w1 >> 48;
	w0 ^= w1 << 16;
	w3 ^= w3 >> 48;
	w2 ^= w3 << 16;
	w0 = undo1(w0), w1 = undo1(w1), w2 = undo1(w2), w3 = undo1(w3);
	/* level 3 */
	uint32_t c = gf->twlog[base >> 4];
	w0 ^= mul4(w2, c);
	w1 ^= mul4(w3, c);
	w2 ^= w0;
	w3 ^= w1;
	/* level 2 */
	uint32_t b = base >> 3;
	w0 ^= mul4(w1, gf->twlog[b]);
	w1 ^= w0;
	w2 ^= mul4(w3, gf->twlog[b + 1]);
	w3 ^= w2;
	/* levels 1, 0 */
	b = base >> 2;
	st64(a, fwd4(w0, b));
	st64(a + 4, fwd4(w1, b + 1));
	st64(a + 8, fwd4(w2, b + 2));
	st64(a + 12, fwd4(w3, b + 3));
}

static void inv16(uint16_t *a, uint32_t base) {
	uint32_t b = base >> 2;
	uint64_t w0 = inv4(ld64(a), b), w1 = inv4(ld64(a + 4), b + 1);
	uint64_t w2 = inv4(ld64(a + 8), b + 2), w3 = inv4(ld64(a + 12), b + 3);
	b = base >> 3;
	w1 ^= w0;
	w0 ^= mul4(w1, gf->twlog[b]);
	w3 ^= w2;
	w2 ^= mul4(w3, gf->twlog[b + 1]);
	uint32_t c = gf->twlog[base >> 4];
	w2 ^= w0;
	w3 ^= w1;
	w0 ^= mul4(w2, c);
	w1 ^= mul4(w3, c);
	w0 = redo1(w0), w1 = redo1(w1), w2 = redo1(w2), w3 = redo1(w3);
	w2 ^= w3 << 16;
	w3 ^= w3 >> 48;
	w0 ^= w1 << 16;
	w1 ^= w1 >> 48;
	w0 ^= w2 << 32 ^ w2 << 16;
	w1 ^= w2 ^ w2 >> 32 ^ w2 >> 48;
	w1 ^= w3 << 32 ^ w3 << 16;
	w2 ^= w3 ^ w3 >> 32 ^ w3 >> 48;
	st64(a, w0), st64(a + 4, w1), st64(a + 8, w2), st64(a + 12, w3);
}

/* slow_butterfly: halves of fewer than 16 elements (transforms below 32
 * points), one element at a time. */
static void slow_butterfly(uint16_t *u, uint16_t *v, uint32_t h, uint32_t b, int inv) {
	uint32_t lc = gf->twlog[b];
	for (uint32_t j = 0; j < h; j++) {
		uint16_t x = u[j], y = v[j];
		if (inv) {
			y ^= x;
			x ^= (uint16_t)mul_log(y, lc);
		} else {
			x ^= (uint16_t)mul_log(y, lc);
			y ^= x;
		}
		u[j] = x, v[j] = y;
	}
}

/* forward: coefficients of a polynomial of degree < n = 2^k in, its values
 * at ω(base + u) out; depth first. inverse undoes it. */
static void forward(uint16_t *a, uint32_t n, uint32_t base) {
	if (n == 16) {
		fwd16(a, base);
		return;
	}
	uint32_t h = n / 2;
	int i = __builtin_ctz(h);
	if (n < 32) { /* tiny transforms, level by level */
		for (; h >= 1; h /= 2, i--)
			for (uint32_t s = 0; s < n; s += 2 * h) {
				divide(a + s, i);
				slow_butterfly(a + s, a + s + h, h, (base + s) >> (i + 1), 0);
			}
		return;
	}
	divide(a, i);
	butterfly(a, a + h, h, base >> (i + 1));
	forward(a, h, base);
	forward(a + h, h, base + h);
}

static void inverse(uint16_t *a, uint32_t n, uint32_t base) {
	if (n == 16) {
		inv16(a, base);
		return;
	}
	uint32_t h = n / 2;
	int i = __builtin_ctz(h);
	if (n < 32) {
		for (uint32_t hh = 1, ii = 0; hh < n; hh *= 2, ii++)
			for (uint32_t s = 0; s < n; s += 2 * hh) {
				slow_butterfly(a + s, a + s + hh, hh, (base + s) >> (ii + 1), 1);
				undivide(a + s, (int)ii);
			}
		return;
	}
	inverse(a, h, base);
	inverse(a + h, h, base + h);
	unbutterfly(a, a + h, h, base >> (i + 1));
	undivide(a, i);
}

/* toeplitz writes to out (ceil(l/64) words) bits n−1 … n+l−2 of the product
 * of the seed bytes sb (n+l−1 bits, bits beyond zero) and the key bytes xb
 * (n bits, bits beyond zero); as toeplitzGF in gf.go. 0, or −1 when out of
 * memory. */
static int toeplitz(const uint8_t *xb, const uint8_t *sb, uint32_t n, uint32_t l, uint64_t *out) {
	if (gf_init())
		return -1;
	uint32_t K = (n + 7) / 8, slen = (uint32_t)(((uint64_t)n + l - 1 + 7) / 8);
	uint32_t tlo = n >= 15 ? (n - 15 + 7) / 8 : 0;
	uint32_t thi = (uint32_t)(((uint64_t)n + l - 2) / 8);
	uint32_t M = thi - tlo + 1;
	int k = 1;
	while (k < MAX_K && capacity(k) < M + K)
		k++;
	uint32_t bk = K, bm = M;
	if (capacity(k) < M + K) {
		uint32_t half = capacity(k) / 2;
		uint32_t nk = (K + half - 1) / half, nm = (M + half - 1) / half;
		uint32_t x = (K + nk - 1) / nk, y = (M + nm - 1) / nm;
		bk = bm = x > y ? x : y;
	}
	uint32_t N = 1u << k;
	uint32_t nk = (K + bk - 1) / bk, nm = (M + bm - 1) / bm;
	/* Seed segments: output block o and key block q use the bm+bk−1 seed
	 * bytes from tlo + o·bm − (q+1)·bk + 1; with bm = bk (or one block
	 * each) that depends on o − q only: segment index o − q + nk − 1. */
	uint32_t nseg = nm + nk - 1;
	uint16_t *a = qkd_malloc((size_t)N * 2);
	uint32_t **logs = qkd_malloc((size_t)(nk + nseg) * sizeof(uint32_t *));
	if (!a || !logs)
		return -1;
	for (uint32_t job = 0; job < nk + nseg; job++) {
		__builtin_memset(a, 0, (size_t)N * 2);
		if (job < nk) {
			for (uint32_t j = 0; j < bk && job * bk + j < K; j++)
				a[j] = xb[job * bk + j];
		} else {
			int64_t d = (int64_t)(job - nk) - (int64_t)(nk - 1); /* o − q */
			int64_t start = (int64_t)tlo + d * bk - bk + 1;
			for (uint32_t v = 0; v < bm + bk - 1; v++) {
				int64_t u = start + v;
				if (u >= 0 && u < slen)
					a[v] = sb[u];
			}
		}
		forward(a, N, 0);
		uint32_t *lg = qkd_malloc((size_t)N * 4);
		if (!lg)
			return -1;
		for (uint32_t f = 0; f < N; f++)
			lg[f] = gf->log[a[f]];
		logs[job] = lg;
	}
	/* per output block: pointwise products summed over the key blocks,
	 * interpolated; output w = o·bm + i is coefficient bk−1+i */
	uint16_t *cs = qkd_malloc((size_t)M * 2 + 16);
	uint8_t *r = qkd_malloc((size_t)M + 16);
	if (!cs || !r)
		return -1;
	for (uint32_t o = 0; o < nm; o++) {
		__builtin_memset(a, 0, (size_t)N * 2);
		for (uint32_t q = 0; q < nk; q++) {
			const uint32_t *lx = logs[q], *ls = logs[nk + (o + nk - 1 - q)];
			for (uint32_t f = 0; f < N; f++)
				a[f] ^= gf->exp[lx[f] + ls[f]];
		}
		inverse(a, N, 0);
		for (uint32_t i = 0; i < bm && o * bm + i < M; i++)
			cs[o * bm + i] = a[bk - 1 + i];
	}
	/* overlap-add the 15-bit C_t into bytes, take bits n−1 … n+l−2 */
	for (uint32_t w = 0; w < M; w++) {
		r[w] ^= (uint8_t)cs[w];
		r[w + 1] ^= (uint8_t)(cs[w] >> 8);
	}
	uint32_t off = n - 1 - 8 * tlo;
	uint32_t nw = (l + 63) / 64;
	for (uint32_t i = 0; i < nw; i++) {
		uint32_t p = off + 64 * i, b = p / 8, sh = p % 8;
		uint64_t w;
		__builtin_memcpy(&w, r + b, 8);
		w >>= sh;
		if (sh)
			w |= (uint64_t)r[b + 8] << (64 - sh);
		out[i] = w;
	}
	if (l % 64)
		out[nw - 1] &= (1ull << (l % 64)) - 1;
	return 0;
}

/* ---- the step ---------------------------------------------------------------- */

static struct {
	int role;
	uint32_t l;
	qkd_bytes seed;
	qkd_vec key;
	int state; /* 0 fresh, 1 key read (Bob waits), 2 done */
	uint32_t rounds;
} st;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	qkd_reader r = qkd_read(params);
	uint32_t l = qkd_r_u32(&r);
	if (qkd_r_done(&r) || l < 1)
		return qkd_fail("amplify params: want u32 ℓ ≥ 1");
	uint8_t *s = qkd_malloc(seed.n + 1);
	if (!s)
		return qkd_fail("out of memory");
	if (seed.n)
		__builtin_memcpy(s, seed.p, seed.n);
	st.role = role, st.l = l, st.seed.p = s, st.seed.n = seed.n;
	return QKD_OK;
}

/* hash: the output vec of T·x for seed bytes sb into res->out. */
static int hash(const uint8_t *sb, qkd_result *res) {
	uint32_t n = st.key.n, l = st.l;
	uint64_t sl = (uint64_t)n + l - 1;
	uint32_t sn = (uint32_t)((sl + 7) / 8);
	/* bits beyond n+ℓ−1 cleared, as bits.FromBytes */
	uint8_t *s = qkd_malloc(sn + 8);
	uint64_t *y = qkd_malloc((size_t)((l + 63) / 64) * 8 + 8);
	if (!s || !y)
		return qkd_fail("out of memory");
	__builtin_memcpy(s, sb, sn);
	if (sl % 8)
		s[sn - 1] &= (uint8_t)((1u << (sl % 8)) - 1);
	if (toeplitz((const uint8_t *)st.key.w, s, n, l, y))
		return qkd_fail("out of memory");
	qkd_w_reserve(&res->out, 4 + (l + 7) / 8);
	qkd_vec v = {y, l};
	qkd_w_vec(&res->out, v);
	return QKD_OK;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	if (st.state == 0 && !has_peer) {
		qkd_reader r = qkd_read(in);
		qkd_r_vec(&r, &st.key);
		if (qkd_r_done(&r))
			return qkd_fail("amplify input: malformed key vector");
		uint32_t n = st.key.n;
		if (st.l > n || (uint64_t)n + st.l - 1 > (1ull << MAXLOG))
			return qkd_fail("amplify: ℓ too large for n");
		st.state = 1;
		res->rounds = st.rounds;
		if (st.role == QKD_BOB)
			return QKD_OK;
		uint64_t sl = (uint64_t)n + st.l - 1;
		uint32_t sn = (uint32_t)((sl + 7) / 8);
		uint8_t *sb = seed_bytes(st.seed, "qkdkms/amplify", sn);
		if (!sb)
			return qkd_fail("out of memory");
		qkd_w_reserve(&res->msg, 4 + sn);
		qkd_w_u32(&res->msg, st.l);
		qkd_w_raw(&res->msg, sb, sn);
		st.rounds++;
		st.state = 2;
		int e = hash(sb, res);
		if (e != QKD_OK)
			return e;
		res->has_msg = 1, res->done = 1, res->rounds = st.rounds;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer && st.role == QKD_BOB) {
		st.rounds++;
		uint64_t sl = (uint64_t)st.key.n + st.l - 1;
		uint32_t sn = (uint32_t)((sl + 7) / 8);
		qkd_reader r = qkd_read(peer);
		uint32_t l = qkd_r_u32(&r);
		const uint8_t *sb = qkd_r_raw(&r, sn);
		if (qkd_r_done(&r) || l != st.l)
			return qkd_fail("amplify: malformed message from Alice");
		st.state = 2;
		int e = hash(sb, res);
		if (e != QKD_OK)
			return e;
		res->done = 1, res->rounds = st.rounds;
		return QKD_OK;
	}
	return qkd_fail("amplify: unexpected call");
}
