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
 * use SIMD128 table look-ups (i8x16.swizzle on 4-bit nibbles); the last
 * four levels and the pointwise products use logarithm tables.
 */
#include <wasm_simd128.h>

#include "qkd_guest.h"

#define MAXLOG 26 /* n+ℓ−1 ≤ 2^26 bits, else a parameter error (as Go) */

/* ---- GF(2^16) and the additive FFT (gf.go) ---------------------------------- */

#define GF_POLY 0x1002Du   /* z^16 + z^5 + z^3 + z^2 + 1, primitive */
#define GF_ORDER 65535u
#define MAX_K 16
#define NIB_N 2048 /* twiddles with nibble tables: every block of ≥ 32 elements */

/* Cantor's basis: β_0 = 1, β_i² + β_i = β_{i−1}. */
static const uint16_t cantor[16] = {0x0001, 0xacca, 0x3c0e, 0x163e, 0xc582, 0xed2e, 0x914c, 0x4012,
                                    0x6c98, 0x10d8, 0x6a72, 0xb900, 0xfdb8, 0xfb34, 0xff38, 0x991e};

/* Memory is the scarce resource here: every page an instance touches costs a
 * page fault and is zeroed by the host afterwards. So the tables are small
 * (u16 logarithms, zero handled by a test) and sized for the transform, no
 * buffer that can be read in place is copied, and short keys skip the
 * transform altogether (direct). */
static struct {
	uint16_t *log;  /* [65536] log[a] base z (a ≠ 0) */
	uint16_t *exp;  /* [2·65535+2] z^(i mod 65535) (the last two: never used unmasked) */
	uint16_t *twlog; /* [N/2] log of tw[b] = ω(2b), the twiddle of block b on any level (b ≠ 0) */
	/* [min(N/32, NIB_N)][8]: nib[b][2k], nib[b][2k+1] are the low and high
	 * bytes of tw[b]·(v << 4k), v < 16, for the swizzle multiplication of
	 * the levels with blocks of ≥ 32 elements */
	v128_t (*nib)[8];
} gf;

/* gf_mul: a·b (a select, not a branch, for the zero test) */
static uint16_t gf_mul(uint16_t a, uint16_t b) {
	uint16_t p = gf.exp[gf.log[a] + gf.log[b]];
	return a && b ? p : 0;
}

/* omega2: tw[b] = ω(2b) = Σ_{bit j of b} β_{j+1} */
static uint16_t omega2(uint32_t b) {
	uint16_t w = 0;
	for (int j = 0; b; j++, b >>= 1)
		if (b & 1)
			w ^= cantor[j + 1];
	return w;
}

/* The hash's working memory is one allocation (an arena), returned when the
 * hash is done (qkd_free of the latest allocation), so that the output and
 * message writers and the result blob reuse its pages. */
static struct {
	uint8_t *p;
	size_t n, used;
} arena;

static int arena_open(size_t n) {
	arena.n = n, arena.used = 0;
	arena.p = qkd_malloc(n);
	return arena.p ? 0 : -1;
}
/* arena_get: n zeroed bytes, 16-byte aligned (the sizes are computed in
 * advance: asking for more than opened is a bug) */
static void *arena_get(size_t n) {
	void *p = arena.p + arena.used;
	arena.used += (n + 15) & ~(size_t)15;
	if (arena.used > arena.n)
		__builtin_trap();
	return p;
}
static void arena_close(void) { qkd_free(arena.p, arena.n); }
static size_t r16(size_t n) { return (n + 15) & ~(size_t)15; }

static uint32_t nib_count(uint32_t N) { return N / 32 < NIB_N ? N / 32 : NIB_N; }

/* gf_size: the arena bytes gf_init takes. */
static size_t gf_size(uint32_t N) {
	return r16(2u << 16) + r16(4 * GF_ORDER + 4) + r16(N) + r16((size_t)nib_count(N) * sizeof gf.nib[0]);
}

/* gf_init: the tables for transforms of N points. */
static void gf_init(uint32_t N) {
	gf.log = arena_get(2u << 16);
	gf.exp = arena_get(4 * GF_ORDER + 4);
	gf.twlog = arena_get(N);
	uint32_t nn = nib_count(N);
	gf.nib = arena_get((size_t)nn * sizeof gf.nib[0]);
	uint32_t x = 1;
	for (uint32_t i = 0; i < GF_ORDER; i++) {
		gf.exp[i] = gf.exp[i + GF_ORDER] = (uint16_t)x;
		gf.log[x] = (uint16_t)i;
		x <<= 1;
		if (x & 0x10000)
			x ^= GF_POLY;
	}
	/* b in Gray-code order: one basis element changes per step */
	uint16_t w = 0;
	for (uint32_t b = 1; b < N / 2; b++) {
		w ^= cantor[__builtin_ctz(b) + 1];
		gf.twlog[b ^ (b >> 1)] = gf.log[w];
	}
	for (uint32_t b = 0; b < nn; b++) {
		uint16_t c = omega2(b), p[16], t[16];
		for (int j = 0; j < 16; j++)
			p[j] = gf_mul(c, (uint16_t)(1u << j)); /* c·z^j */
		uint8_t *o = (uint8_t *)gf.nib[b];
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

/* xor_into: dst[0..n) += src[0..n) (never overlapping: the runs of the
 * conversion are at most as long as their shift). */
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

/* Conversion to the novel basis (toNovel in gf.go): expand in powers of
 * y = x^τ + x (taylor), convert the rows of τ coefficients, then the
 * columns (the same algorithm with rows of e·τ elements as elements). */
static void divide16(uint16_t *a);
static void undivide16(uint16_t *a);

/* taylor: f (2^k coefficients of e elements) in powers of y = x^τ + x,
 * τ = 2^k2: divide by y^(2^(k−k2−1)) = x^t + x^(t/τ) (f[i−D] += f[i], i
 * descending, in runs of D = t − t/τ), then both halves. */
static void taylor(uint16_t *a, int k, int k2, uint32_t e) {
	if (k <= k2)
		return;
	uint32_t t = 1u << (k - 1), d = t - (t >> k2);
	for (uint32_t T = 2 * t; T > t; T -= d) {
		uint32_t lo = T - d > t ? T - d : t;
		xor_into(a + (lo - d) * e, a + lo * e, (T - lo) * e);
	}
	taylor(a, k - 1, k2, e);
	taylor(a + t * e, k - 1, k2, e);
}

/* untaylor: taylor's additions in reverse order (runs ascending). */
static void untaylor(uint16_t *a, int k, int k2, uint32_t e) {
	if (k <= k2)
		return;
	uint32_t t = 1u << (k - 1), d = t - (t >> k2);
	untaylor(a, k - 1, k2, e);
	untaylor(a + t * e, k - 1, k2, e);
	for (uint32_t lo = t; lo < 2 * t; lo += d) {
		uint32_t T = lo + d < 2 * t ? lo + d : 2 * t;
		xor_into(a + (lo - d) * e, a + lo * e, (T - lo) * e);
	}
}

/* tr8 transposes the 8×8 matrix of u16 whose rows are r[0…7]. */
static void tr8(v128_t r[8]) {
	v128_t t[8], u[8];
	for (int i = 0; i < 8; i += 2) {
		t[i] = wasm_i16x8_shuffle(r[i], r[i + 1], 0, 8, 1, 9, 2, 10, 3, 11);
		t[i + 1] = wasm_i16x8_shuffle(r[i], r[i + 1], 4, 12, 5, 13, 6, 14, 7, 15);
	}
	for (int i = 0; i < 8; i += 4)
		for (int j = 0; j < 2; j++) {
			u[i + 2 * j] = wasm_i32x4_shuffle(t[i + j], t[i + j + 2], 0, 4, 1, 5);
			u[i + 2 * j + 1] = wasm_i32x4_shuffle(t[i + j], t[i + j + 2], 2, 6, 3, 7);
		}
	for (int i = 0; i < 4; i++) {
		r[2 * i] = wasm_i64x2_shuffle(u[i], u[i + 4], 0, 2);
		r[2 * i + 1] = wasm_i64x2_shuffle(u[i], u[i + 4], 1, 3);
	}
}

/* transpose256: the 256×256 matrix of u16 at a, in place, by 8×8 blocks. */
static void transpose256(uint16_t *a) {
	for (uint32_t i = 0; i < 256; i += 8)
		for (uint32_t j = i; j < 256; j += 8) {
			uint16_t *x = a + 256 * i + j, *y = a + 256 * j + i;
			v128_t rx[8], ry[8];
			for (int r = 0; r < 8; r++)
				rx[r] = wasm_v128_load(x + 256 * r), ry[r] = wasm_v128_load(y + 256 * r);
			tr8(rx);
			tr8(ry);
			for (int r = 0; r < 8; r++)
				wasm_v128_store(x + 256 * r, ry[r]), wasm_v128_store(y + 256 * r, rx[r]);
		}
}

/* the largest power of two below k (k ≥ 2) */
static int pow2_below(int k) { return 1 << (31 - __builtin_clz((unsigned)(k - 1))); }

/* to_novel: a polynomial of degree < 2^k with coefficients of e elements,
 * monomial to novel basis, in place; from_novel is its inverse. */
static void to_novel(uint16_t *a, int k, uint32_t e) {
	if (k <= 1)
		return; /* X_0 = 1, X_1 = s_0 = x */
	if (k == 4 && e == 1) {
		divide16(a);
		return;
	}
	if (k == 16 && e == 1) {
		/* the rows of 256 would be converted in short runs: transposed,
		 * they are converted as columns, in runs of whole rows */
		taylor(a, 16, 8, 1);
		transpose256(a);
		to_novel(a, 8, 256);
		transpose256(a);
		to_novel(a, 8, 256);
		return;
	}
	int k2 = pow2_below(k);
	taylor(a, k, k2, e);
	uint32_t row = e << k2;
	for (uint32_t q = 0; q < (1u << (k - k2)); q++)
		to_novel(a + q * row, k2, e);
	to_novel(a, k - k2, row);
}

static void from_novel(uint16_t *a, int k, uint32_t e) {
	if (k <= 1)
		return;
	if (k == 4 && e == 1) {
		undivide16(a);
		return;
	}
	if (k == 16 && e == 1) {
		from_novel(a, 8, 256);
		transpose256(a);
		from_novel(a, 8, 256);
		transpose256(a);
		untaylor(a, 16, 8, 1);
		return;
	}
	int k2 = pow2_below(k);
	uint32_t row = e << k2;
	from_novel(a, k - k2, row);
	for (uint32_t q = 0; q < (1u << (k - k2)); q++)
		from_novel(a + q * row, k2, e);
	untaylor(a, k, k2, e);
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
	const v128_t *t = gf.nib[b];
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
	const v128_t *t = gf.nib[b];
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

/* mul_log: x (low 16 bits) times the nonzero element of logarithm lc */
static uint64_t mul_log(uint64_t x, uint32_t lc) {
	uint16_t v = (uint16_t)x, p = gf.exp[gf.log[v] + lc];
	return v ? p : 0;
}
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
	uint32_t c = gf.twlog[b];
	w ^= mul_log(w >> 32, c) | mul_log(w >> 48, c) << 16;
	w ^= w << 32;
	uint32_t c0 = gf.twlog[2 * b], c1 = gf.twlog[2 * b + 1];
	w ^= mul_log(w >> 16, c0) | mul_log(w >> 48, c1) << 32;
	return w ^ (w & LANES02) << 16;
}

static uint64_t inv4(uint64_t w, uint32_t b) {
	w ^= (w & LANES02) << 16;
	uint32_t c0 = gf.twlog[2 * b], c1 = gf.twlog[2 * b + 1];
	w ^= mul_log(w >> 16, c0) | mul_log(w >> 48, c1) << 32;
	w ^= w << 32;
	uint32_t c = gf.twlog[b];
	return w ^ (mul_log(w >> 32, c) | mul_log(w >> 48, c) << 16);
}

/* divide16: the conversion of a 16-element block (divide by s_3 =
 * x^8+x^4+x^2+x, the halves by s_2 = x^4+x, the quarters by s_1 = x^2+x). */
static void divide16(uint16_t *a) {
	uint64_t w0 = ld64(a), w1 = ld64(a + 4), w2 = ld64(a + 8), w3 = ld64(a + 12);
	/* s_3: a[t−4], a[t−6], a[t−7] += a[t] for t = 15…12 (word 3), then 11…8 */
	w2 ^= w3 ^ w3 >> 32 ^ w3 >> 48;
	w1 ^= w3 << 32 ^ w3 << 16;
	w1 ^= w2 ^ w2 >> 32 ^ w2 >> 48;
	w0 ^= w2 << 32 ^ w2 << 16;
	/* s_2: a[t−3] += a[t] for t = 7…4 in each half */
	w1 ^= w1 >> 48;
	w0 ^= w1 << 16;
	w3 ^= w3 >> 48;
	w2 ^= w3 << 16;
	/* s_1: a[2] += a[3], a[1] += a[2] in each word */
	st64(a, undo1(w0)), st64(a + 4, undo1(w1)), st64(a + 8, undo1(w2)), st64(a + 12, undo1(w3));
}

static void undivide16(uint16_t *a) {
	uint64_t w0 = redo1(ld64(a)), w1 = redo1(ld64(a + 4)), w2 = redo1(ld64(a + 8)), w3 = redo1(ld64(a + 12));
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

/* fwd16: the butterflies of levels 3…0 on a block of 16 elements at offset
 * base ≠ 0 (all its twiddles nonzero); inv16 undoes them. */
static void fwd16(uint16_t *a, uint32_t base) {
	uint64_t w0 = ld64(a), w1 = ld64(a + 4), w2 = ld64(a + 8), w3 = ld64(a + 12);
	/* level 3 */
	uint32_t c = gf.twlog[base >> 4];
	w0 ^= mul4(w2, c);
	w1 ^= mul4(w3, c);
	w2 ^= w0;
	w3 ^= w1;
	/* level 2 */
	uint32_t b = base >> 3;
	w0 ^= mul4(w1, gf.twlog[b]);
	w1 ^= w0;
	w2 ^= mul4(w3, gf.twlog[b + 1]);
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
	w0 ^= mul4(w1, gf.twlog[b]);
	w3 ^= w2;
	w2 ^= mul4(w3, gf.twlog[b + 1]);
	uint32_t c = gf.twlog[base >> 4];
	w2 ^= w0;
	w3 ^= w1;
	w0 ^= mul4(w2, c);
	w1 ^= mul4(w3, c);
	st64(a, w0), st64(a + 4, w1), st64(a + 8, w2), st64(a + 12, w3);
}

/* slow_butterfly: halves of fewer than 16 elements (transforms below 32
 * points, and the first 16 elements, whose twiddles include 0), one element
 * at a time. */
static void slow_butterfly(uint16_t *u, uint16_t *v, uint32_t h, uint32_t b, int inv) {
	uint32_t lc = gf.twlog[b];
	for (uint32_t j = 0; j < h; j++) {
		uint16_t x = u[j], y = v[j];
		if (inv) {
			y ^= x;
			if (b)
				x ^= (uint16_t)mul_log(y, lc);
		} else {
			if (b)
				x ^= (uint16_t)mul_log(y, lc);
			y ^= x;
		}
		u[j] = x, v[j] = y;
	}
}

/* forward: novel-basis coefficients of a polynomial of degree < n = 2^k in
 * (to_novel), its values at ω(base + u) out; depth first. inverse undoes it. */
static void forward(uint16_t *a, uint32_t n, uint32_t base) {
	if (n == 16 && base != 0) {
		fwd16(a, base);
		return;
	}
	uint32_t h = n / 2;
	int i = __builtin_ctz(h);
	if (n <= 16) { /* level by level */
		for (; h >= 1; h /= 2, i--)
			for (uint32_t s = 0; s < n; s += 2 * h)
				slow_butterfly(a + s, a + s + h, h, (base + s) >> (i + 1), 0);
		return;
	}
	butterfly(a, a + h, h, base >> (i + 1));
	forward(a, h, base);
	forward(a + h, h, base + h);
}

static void inverse(uint16_t *a, uint32_t n, uint32_t base) {
	if (n == 16 && base != 0) {
		inv16(a, base);
		return;
	}
	uint32_t h = n / 2;
	int i = __builtin_ctz(h);
	if (n <= 16) {
		for (uint32_t hh = 1, ii = 0; hh < n; hh *= 2, ii++)
			for (uint32_t s = 0; s < n; s += 2 * hh)
				slow_butterfly(a + s, a + s + hh, hh, (base + s) >> (ii + 1), 1);
		return;
	}
	inverse(a, h, base);
	inverse(a + h, h, base + h);
	unbutterfly(a, a + h, h, base >> (i + 1));
}

/* to_logs replaces the n values of a by their logarithms, ZLOG for 0, so
 * that the pointwise products (a transform is used by several) take one
 * table look-up: mul_logs adds x·s to y for x, s in that form. */
#define ZLOG 0xFFFFu

static void to_logs(uint16_t *a, uint32_t n) {
	uint32_t f = 0;
	const v128_t z = wasm_i16x8_splat((int16_t)ZLOG);
	for (; f + 8 <= n; f += 8) {
		v128_t v = wasm_v128_load(a + f);
		const uint16_t *g = gf.log;
		v128_t l = wasm_u16x8_make(g[wasm_u16x8_extract_lane(v, 0)], g[wasm_u16x8_extract_lane(v, 1)],
		                           g[wasm_u16x8_extract_lane(v, 2)], g[wasm_u16x8_extract_lane(v, 3)],
		                           g[wasm_u16x8_extract_lane(v, 4)], g[wasm_u16x8_extract_lane(v, 5)],
		                           g[wasm_u16x8_extract_lane(v, 6)], g[wasm_u16x8_extract_lane(v, 7)]);
		wasm_v128_store(a + f, wasm_v128_bitselect(z, l, wasm_i16x8_eq(v, wasm_i16x8_splat(0))));
	}
	for (; f < n; f++) {
		uint16_t v = a[f], l = gf.log[v];
		a[f] = v ? l : (uint16_t)ZLOG;
	}
}

static void mul_logs(uint16_t *y, const uint16_t *x, const uint16_t *s, uint32_t n) {
	uint32_t f = 0;
	/* 8 at a time: the sums of logarithms and the zero test in SIMD, the
	 * 8 look-ups (there is no gather) scalar */
	const v128_t z = wasm_i16x8_splat((int16_t)ZLOG);
	for (; f + 8 <= n; f += 8) {
		v128_t lx = wasm_v128_load(x + f), ls = wasm_v128_load(s + f);
		v128_t lo = wasm_i32x4_add(wasm_u32x4_extend_low_u16x8(lx), wasm_u32x4_extend_low_u16x8(ls));
		v128_t hi = wasm_i32x4_add(wasm_u32x4_extend_high_u16x8(lx), wasm_u32x4_extend_high_u16x8(ls));
		const uint16_t *e = gf.exp;
		v128_t p = wasm_u16x8_make(e[wasm_i32x4_extract_lane(lo, 0)], e[wasm_i32x4_extract_lane(lo, 1)],
		                           e[wasm_i32x4_extract_lane(lo, 2)], e[wasm_i32x4_extract_lane(lo, 3)],
		                           e[wasm_i32x4_extract_lane(hi, 0)], e[wasm_i32x4_extract_lane(hi, 1)],
		                           e[wasm_i32x4_extract_lane(hi, 2)], e[wasm_i32x4_extract_lane(hi, 3)]);
		v128_t zero = wasm_v128_or(wasm_i16x8_eq(lx, z), wasm_i16x8_eq(ls, z));
		wasm_v128_store(y + f, wasm_v128_xor(wasm_v128_load(y + f), wasm_v128_andnot(p, zero)));
	}
	for (; f < n; f++) {
		uint32_t lx = x[f], ls = s[f];
		uint16_t p = gf.exp[lx + ls]; /* lx + ls ≤ 2·ZLOG: inside exp */
		y[f] ^= lx != ZLOG && ls != ZLOG ? p : 0;
	}
}

/* byte_at: byte u of a bit string of nbits bits, bits beyond masked off
 * (the buffers are read in place, and may hold any bits there). */
static uint8_t byte_at(const uint8_t *b, uint64_t nbits, int64_t u) {
	if (u < 0 || (uint64_t)u * 8 >= nbits)
		return 0;
	uint64_t left = nbits - (uint64_t)u * 8;
	return left >= 8 ? b[u] : (uint8_t)(b[u] & ((1u << left) - 1));
}

/* direct computes the hash by its definition, a word at a time: y_i =
 * parity(s[i … i+n−1] ∧ reverse(x)). Cheaper than the tables and
 * transforms for short keys (l·ceil(n/64) ≤ DIRECT_MAX). */
#ifndef DIRECT_MAX /* tests build with -DDIRECT_MAX=0 to cover every transform size */
#define DIRECT_MAX (1u << 19)
#endif

static int direct(const uint8_t *xb, const uint8_t *sb, uint32_t n, uint32_t l, uint64_t *out) {
	uint32_t nw = (n + 63) / 64, sw = (uint32_t)(((uint64_t)n + l - 1 + 63) / 64) + 2;
	if (arena_open(r16((size_t)nw * 8) + r16((size_t)sw * 8)))
		return -1;
	uint64_t *xr = arena_get((size_t)nw * 8), *s = arena_get((size_t)sw * 8);
	for (uint32_t j = 0; j < n; j++)
		if (byte_at(xb, n, j / 8) >> (j % 8) & 1)
			xr[(n - 1 - j) / 64] |= 1ull << ((n - 1 - j) % 64);
	/* s beyond n+l−1 bits is never used: xr is 0 beyond n */
	__builtin_memcpy(s, sb, (size_t)(((uint64_t)n + l - 1 + 7) / 8));
	for (uint32_t i = 0; i < l; i++) {
		uint32_t q = i / 64, r = i % 64;
		uint64_t acc = 0;
		for (uint32_t k = 0; k < nw; k++) {
			uint64_t v = s[q + k] >> r;
			if (r)
				v |= s[q + k + 1] << (64 - r);
			acc ^= v & xr[k];
		}
		out[i / 64] |= (uint64_t)(__builtin_popcountll(acc) & 1) << (i % 64);
	}
	arena_close();
	return 0;
}

/* toeplitz writes to out (ceil(l/64) words) bits n−1 … n+l−2 of the product
 * of the seed sb (n+l−1 bits) and the key xb (n bits), as toeplitzGF in
 * gf.go. 0, or −1 when out of memory.
 *
 * Order of work, to keep few transforms in memory: the key blocks are
 * transformed and kept (nk), the output blocks accumulate (nm), and each
 * seed segment is transformed once and multiplied into every output block
 * that uses it. */
static int toeplitz(const uint8_t *xb, const uint8_t *sb, uint32_t n, uint32_t l, uint64_t *out) {
	if ((uint64_t)l * ((n + 63) / 64) <= DIRECT_MAX)
		return direct(xb, sb, n, l, out);
	uint64_t sbits = (uint64_t)n + l - 1;
	uint32_t K = (n + 7) / 8;
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
	size_t tsz = (size_t)N * 2; /* one transform */
	int rsep = (size_t)nk * tsz < (size_t)M + 16; /* r does not fit in xs */
	if (arena_open(gf_size(N) + r16(nk * tsz) + r16(nm * tsz) + r16(tsz) + (rsep ? r16((size_t)M + 16) : 0)))
		return -1;
	gf_init(N);
	uint16_t *xs = arena_get(nk * tsz), *acc = arena_get(nm * tsz), *a = arena_get(tsz);
	for (uint32_t q = 0; q < nk; q++) {
		uint16_t *x = xs + (size_t)q * N;
		for (uint32_t j = 0; j < bk && q * bk + j < K; j++)
			x[j] = byte_at(xb, n, (int64_t)q * bk + j);
		to_novel(x, k, 1);
		forward(x, N, 0);
		to_logs(x, N);
	}
	/* Segment d = o − q + nk − 1: output block o and key block q use the
	 * bm+bk−1 seed bytes from tlo + o·bm − (q+1)·bk + 1 (bm = bk, or one
	 * block each). */
	for (uint32_t d = 0; d < nm + nk - 1; d++) {
		int64_t start = (int64_t)tlo + ((int64_t)d - (int64_t)(nk - 1)) * bk - bk + 1;
		__builtin_memset(a, 0, (size_t)N * 2);
		for (uint32_t v = 0; v < bm + bk - 1; v++)
			a[v] = byte_at(sb, sbits, start + v);
		to_novel(a, k, 1);
		forward(a, N, 0);
		to_logs(a, N);
		for (uint32_t o = 0; o < nm; o++) {
			int64_t q = (int64_t)o + nk - 1 - d;
			if (q >= 0 && q < nk)
				mul_logs(acc + (size_t)o * N, xs + (size_t)q * N, a, N);
		}
	}
	/* interpolate; output w = o·bm + i is coefficient bk−1+i of block o.
	 * Overlap-add the 15-bit C_t into bytes r (r[0] is byte tlo of the
	 * product), reusing the key blocks' memory, then take bits n−1 … */
	uint8_t *r = rsep ? arena_get((size_t)M + 16) : (uint8_t *)xs;
	__builtin_memset(r, 0, (size_t)M + 16);
	for (uint32_t o = 0; o < nm; o++) {
		uint16_t *y = acc + (size_t)o * N;
		inverse(y, N, 0);
		from_novel(y, k, 1);
		for (uint32_t i = 0; i < bm && o * bm + i < M; i++) {
			uint32_t w = o * bm + i;
			uint16_t c = y[bk - 1 + i];
			r[w] ^= (uint8_t)c;
			r[w + 1] ^= (uint8_t)(c >> 8);
		}
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
	arena_close();
	return 0;
}

/* ---- the step ---------------------------------------------------------------- */

/* The seed and the key are read in place: the host's buffers (qkd_alloc)
 * are never freed by this plugin, so they outlive the calls. */
static struct {
	int role;
	uint32_t l;
	qkd_bytes seed;
	const uint8_t *key; /* n bits; bits beyond n may be set (ignored, as Go) */
	uint32_t n;
	int state; /* 0 fresh, 1 key read (Bob waits), 2 done */
	uint32_t rounds;
} st;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	qkd_reader r = qkd_read(params);
	uint32_t l = qkd_r_u32(&r);
	if (qkd_r_done(&r) || l < 1)
		return qkd_fail("amplify params: want u32 ℓ ≥ 1");
	st.role = role, st.l = l, st.seed = seed;
	return QKD_OK;
}

/* hash: the output vec of T·x for the seed bytes sb (n+ℓ−1 bits), written
 * straight into res->out. */
static int hash(const uint8_t *sb, qkd_result *res) {
	uint32_t l = st.l, nb = (l + 7) / 8;
	uint64_t *y = qkd_malloc((size_t)((l + 63) / 64) * 8);
	if (!y)
		return qkd_fail("out of memory");
	if (toeplitz(st.key, sb, st.n, l, y))
		return qkd_fail("out of memory");
	qkd_w_reserve(&res->out, 4 + nb);
	qkd_w_u32(&res->out, l);
	qkd_w_raw(&res->out, y, nb);
	return QKD_OK;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	if (st.state == 0 && !has_peer) {
		/* a wire vec: u32 n, ceil(n/8) bytes, nothing after */
		qkd_reader r = qkd_read(in);
		uint32_t n = qkd_r_u32(&r);
		const uint8_t *key = qkd_r_raw(&r, (uint32_t)(((uint64_t)n + 7) / 8));
		if (qkd_r_done(&r))
			return qkd_fail("amplify input: malformed key vector");
		if (st.l > n || (uint64_t)n + st.l - 1 > (1ull << MAXLOG))
			return qkd_fail("amplify: ℓ too large for n");
		st.key = key, st.n = n;
		st.state = 1;
		res->rounds = st.rounds;
		if (st.role == QKD_BOB)
			return QKD_OK;
		uint32_t sn = (uint32_t)(((uint64_t)n + st.l - 1 + 7) / 8);
		const uint8_t *sb = qkd_seed_bytes(st.seed, "qkdkms/amplify", sn);
		if (!sb)
			return qkd_fail("out of memory");
		st.rounds++;
		st.state = 2;
		int e = hash(sb, res);
		if (e != QKD_OK)
			return e;
		/* the message after the hash: its buffer reuses the hash's memory */
		qkd_w_reserve(&res->msg, 4 + sn);
		qkd_w_u32(&res->msg, st.l);
		qkd_w_raw(&res->msg, sb, sn);
		res->has_msg = 1, res->done = 1, res->rounds = st.rounds;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer && st.role == QKD_BOB) {
		st.rounds++;
		uint32_t sn = (uint32_t)(((uint64_t)st.n + st.l - 1 + 7) / 8);
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
