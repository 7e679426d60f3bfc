/*
 * cascade_impl.h — Cascade error reconciliation as a freestanding C step
 * plugin (plugins/ABI.md), a line-by-line port of the reference
 * implementation plugins/steps/reconcile/cascade/cascade.go and of the
 * helpers it uses from plugins/steps/bits (xoshiro256** RNG, Perm, SeedBytes,
 * vector parity). The C build must equal the Go one bit for bit: same
 * messages, outputs and metrics for every (role, params, seed, input,
 * messages), and an error wherever Go returns one. Read cascade.go for the
 * protocol; the comments here name the Go function each part ports.
 *
 * A plugin file defines CASCADE_VARIANT (CASCADE_OPTION8 or CASCADE_YANETAL)
 * and includes this header once (plugins/c/cascade/cascade.c,
 * plugins/c/cascade-yanetal/cascade-yanetal.c).
 *
 * Speed. The data structures are Go's, laid out so that few memory pages
 * are touched and few loop iterations run: an instance lives for one
 * session, every page it touches first costs the host a page fault, and the
 * host counts every loop iteration and call (ABI.md §1, instrumentation).
 * Where the C differs from the Go in how it gets a result (not in the
 * result), a comment says why the result is the same.
 *
 * Memory: the bump allocator of qkd_guest.h (memory it never handed out is
 * left untouched); nothing is freed except growable arrays moved on growth,
 * a pass's shuffle buffer (Alice) and each received message. Running out of
 * memory traps (the host aborts the session, ABI.md §1), as the Go plugin's
 * runtime does.
 */
#ifndef CASCADE_IMPL_H
#define CASCADE_IMPL_H

#include "qkd_guest.h"

#define CASCADE_OPTION8 1
#define CASCADE_YANETAL 2
#ifndef CASCADE_VARIANT
#error "define CASCADE_VARIANT before including cascade_impl.h"
#endif

/* ---- small helpers -------------------------------------------------------- */

static void *must_alloc(uint64_t n) {
	void *p = n < 0xFFFFFFF0ull ? qkd_malloc((size_t)n) : NULL;
	if (!p)
		__builtin_trap(); /* out of memory: the session aborts */
	return p;
}

/* grow makes room for need elements of size elem in *p (capacity *cap),
 * doubling; the old block is given back when it is the newest one. */
static void grow_slow(void **p, uint32_t *cap, uint32_t need, uint32_t elem) {
	uint32_t nc = *cap ? *cap : 16;
	while (nc < need)
		nc *= 2;
	void *q = must_alloc((uint64_t)nc * elem);
	if (*cap) {
		__builtin_memcpy(q, *p, (size_t)*cap * elem);
		qkd_free(*p, (size_t)*cap * elem);
	}
	*p = q, *cap = nc;
}
static inline void grow(void **p, uint32_t *cap, uint32_t need, uint32_t elem) {
	if (need > *cap)
		grow_slow(p, cap, need, elem);
}

static int popcount64(uint64_t x) { return __builtin_popcountll(x); }
static int len32(uint32_t x) { return x ? 32 - __builtin_clz(x) : 0; } /* math/bits.Len */

static double f64_from_bits(uint64_t u) {
	double d;
	__builtin_memcpy(&d, &u, 8);
	return d;
}
static uint64_t f64_bits(double d) {
	uint64_t u;
	__builtin_memcpy(&u, &d, 8);
	return u;
}

/* ---- Go's math.Log2, bit for bit ------------------------------------------
 * The option-8 block sizes are 1 << ceil(log2(1/q) − 0.5); near a power of
 * two a last-bit difference in log2 changes the block size, so this is
 * Go's algorithm (math/log10.go log2, math/log.go log, math/frexp.go) with
 * its constants, evaluated in the same order and without fused
 * multiply-adds (wasm has none; Go on amd64 emits none at GOAMD64=v1, and its
 * assembly Log performs the same operations). */

/* go_frexp: math.Frexp. */
static double go_frexp(double f, int *exp) {
	*exp = 0;
	if (f == 0 || f != f || f - f != 0) /* ±0, NaN, ±Inf */
		return f;
	uint64_t x = f64_bits(f);
	if ((x & 0x7FF0000000000000ull) == 0) { /* subnormal: normalize */
		f *= 4503599627370496.0;            /* 2^52 */
		*exp = -52;
		x = f64_bits(f);
	}
	*exp += (int)((x >> 52) & 0x7FF) - 1023 + 1;
	x &= ~(0x7FFull << 52);
	x |= (uint64_t)(-1 + 1023) << 52;
	return f64_from_bits(x);
}

/* go_log: math.Log (the FreeBSD algorithm, as in math/log.go). */
static double go_log(double x) {
	const double Ln2Hi = f64_from_bits(0x3fe62e42fee00000ull), Ln2Lo = f64_from_bits(0x3dea39ef35793c76ull),
	             L1 = f64_from_bits(0x3FE5555555555593ull), L2 = f64_from_bits(0x3FD999999997FA04ull),
	             L3 = f64_from_bits(0x3FD2492494229359ull), L4 = f64_from_bits(0x3FCC71C51D8E78AFull),
	             L5 = f64_from_bits(0x3FC7466496CB03DEull), L6 = f64_from_bits(0x3FC39A09D078C69Full),
	             L7 = f64_from_bits(0x3FC2F112DF3E5244ull), HalfSqrt2 = f64_from_bits(0x3fe6a09e667f3bcdull);
	if (x != x || x == __builtin_inf())
		return x;
	if (x < 0)
		return __builtin_nan("");
	if (x == 0)
		return -__builtin_inf();
	int ki;
	double f1 = go_frexp(x, &ki);
	if (f1 < HalfSqrt2) {
		f1 *= 2;
		ki--;
	}
	double f = f1 - 1;
	double k = (double)ki;
	double s = f / (2 + f);
	double s2 = s * s;
	double s4 = s2 * s2;
	double t1 = s2 * (L1 + s4 * (L3 + s4 * (L5 + s4 * L7)));
	double t2 = s4 * (L2 + s4 * (L4 + s4 * L6));
	double R = t1 + t2;
	double hfsq = 0.5 * f * f;
	return k * Ln2Hi - ((hfsq - (s * (hfsq + R) + k * Ln2Lo)) - f);
}

/* go_log2: math.Log2. */
static double go_log2(double x) {
	int exp;
	double frac = go_frexp(x, &exp);
	if (frac == 0.5)
		return (double)(exp - 1);
	return go_log(frac) * f64_from_bits(0x3ff71547652b82feull) /* 1/Ln2 */ + (double)exp;
}

/* ---- Variant (cascade.go: Variant, Option8, Yanetal) ---------------------- */

#if CASCADE_VARIANT == CASCADE_OPTION8
#define PASSES 14
/* block returns the block size of pass i for QBER q and n bits (Option8.Block). */
static int64_t block(double q, int64_t n, int i) {
	double a = go_log2(1 / q) - 0.5;
	switch (i) {
	case 0:
		return (int64_t)1 << (int)__builtin_ceil(a);
	case 1:
		return (int64_t)1 << (int)__builtin_ceil((a + 12) / 2);
	case 2:
		return 4096;
	}
	return n / 2;
}
#elif CASCADE_VARIANT == CASCADE_YANETAL
#define PASSES 10
/* Yanetal.Block */
static int64_t block(double q, int64_t n, int i) {
	int64_t k1 = (int64_t)__builtin_ceil(0.8 / q);
	switch (i) {
	case 0:
		return k1;
	case 1:
		return 5 * k1;
	}
	return n / 2;
}
#else
#error "unknown CASCADE_VARIANT"
#endif

/* ---- bit vectors (bits.Vec) ----------------------------------------------- */

static void vec_set1(uint64_t *w, uint32_t i) { w[i >> 6] |= 1ull << (i & 63); }
static void vec_flip(uint64_t *w, uint32_t i) { w[i >> 6] ^= 1ull << (i & 63); }

/* vec_parity: bits.Vec.Parity, the parity of bits [lo, hi). */
static uint8_t vec_parity(const uint64_t *w, uint32_t lo, uint32_t hi) {
	if (hi <= lo)
		return 0;
	uint32_t wl = lo >> 6, wh = (hi - 1) >> 6;
	uint64_t ml = ~0ull << (lo & 63);
	uint64_t mh = ~0ull >> (63 - ((hi - 1) & 63));
	if (wl == wh)
		return (uint8_t)(popcount64(w[wl] & ml & mh) & 1);
	uint64_t x = w[wl] & ml;
	/* eight words per iteration: fewer loop iterations for the host to
	 * count */
	uint32_t i = wl + 1;
	for (; i + 8 <= wh; i += 8)
		x ^= w[i] ^ w[i + 1] ^ w[i + 2] ^ w[i + 3] ^ w[i + 4] ^ w[i + 5] ^ w[i + 6] ^ w[i + 7];
	for (; i < wh; i++)
		x ^= w[i];
	x ^= w[wh] & mh;
	return (uint8_t)(popcount64(x) & 1);
}

/* A wire vec read without copying (wire.Reader.Vec, bits.FromBytes): n bits
 * in ceil(n/8) bytes, bit i in byte i/8 at bit i%8; bits beyond n are
 * ignored, as FromBytes clears them. */
typedef struct {
	const uint8_t *b;
	uint32_t n;
} bitsview;

static bitsview r_bits(qkd_reader *r) {
	bitsview v = {NULL, 0};
	uint32_t n = qkd_r_u32(r);
	const uint8_t *b = qkd_r_raw(r, (uint32_t)(((uint64_t)n + 7) / 8));
	if (!r->err)
		v.b = b, v.n = n;
	return v;
}
static uint8_t bits_get(bitsview v, uint32_t i) { return (uint8_t)(v.b[i >> 3] >> (i & 7) & 1); }

/* ---- packed arrays and permutation tables --------------------------------- */

static uint64_t load64(const uint8_t *p) {
	uint64_t x;
	__builtin_memcpy(&x, p, 8);
	return x;
}
static void store64(uint8_t *p, uint64_t x) { __builtin_memcpy(p, &x, 8); }

/* packed_get/packed_set: entry i of an array of bits-bit entries (bits ≤ 32;
 * the array has 8 spare bytes at the end). */
static uint32_t packed_get(const uint64_t *a, uint32_t bits, uint32_t i) {
	uint64_t o = (uint64_t)i * bits;
	return (uint32_t)((load64((const uint8_t *)a + (o >> 3)) >> (o & 7)) & (((uint64_t)1 << bits) - 1));
}
static void packed_set(uint64_t *a, uint32_t bits, uint32_t i, uint32_t v) {
	uint64_t o = (uint64_t)i * bits;
	uint8_t *p = (uint8_t *)a + (o >> 3);
	uint64_t m = (((uint64_t)1 << bits) - 1) << (o & 7);
	store64(p, (load64(p) & ~m) | ((uint64_t)v << (o & 7)));
}

/* A permutation table (a Go []uint32 of values < n): entry i is lo[i] |
 * hi_i << 16, hi_i the i-th hb-bit field of hi, hb = Len(n−1) − 16 (0 for
 * n ≤ 2^16: no hi). Two bytes and a bit per entry for n ≤ 2^17 instead of
 * four: fewer memory pages to touch, and each page a WASM instance touches
 * first costs a page fault in the host (an instance lives for one session). */
typedef struct {
	uint16_t *lo;
	uint64_t *hi;
	uint32_t hb;
} ptab;

static inline __attribute__((always_inline)) uint32_t ptab_get(ptab a, uint32_t i) {
	uint32_t v = a.lo[i];
	if (a.hb)
		v |= packed_get(a.hi, a.hb, i) << 16;
	return v;
}
static inline __attribute__((always_inline)) void ptab_set(ptab a, uint32_t i, uint32_t v) {
	a.lo[i] = (uint16_t)v;
	if (a.hb)
		packed_set(a.hi, a.hb, i, v >> 16);
}

/* ---- RNG (bits/rng.go) ---------------------------------------------------- */

/* rng is xoshiro256** (bits.RNG). */
typedef struct {
	uint64_t s[4];
} rng;

static uint64_t rotl(uint64_t x, int k) { return x << k | x >> (64 - k); }

/* rng_new: bits.NewRNG(seed, label) — state = SHA-256(label, 0, seed) as
 * four little-endian words (all-zero state: s[0] = 1). */
static void rng_new(rng *r, const uint8_t *seed, uint32_t seedlen, const char *label) {
	uint8_t d[32];
	qkd_label_sha256(label, seed, seedlen, d);
	for (int i = 0; i < 4; i++)
		r->s[i] = qkd_le64(d + 8 * i);
	if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
		r->s[0] = 1;
}

/* rng_u64: RNG.Uint64. */
static uint64_t rng_u64(rng *r) {
	uint64_t *s = r->s;
	uint64_t res = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

/* rng_perm: RNG.Perm(n) into p[0..n), a Fisher–Yates shuffle of [0, n)
 * drawing two Lemire multiply-shift bounds per xoshiro output (low 32 bits
 * for position i with bound i+1, then high 32 bits for i−1 with bound i),
 * and one more output for position 1 when it is left over. */
static void rng_perm(rng *r, uint32_t n, uint32_t *p) {
	/* Loops are unrolled here and below: the host counts every loop
	 * iteration (ABI.md §1, instrumentation), and an iteration costs more
	 * in WASM than natively. */
#pragma clang loop unroll_count(4)
	for (uint32_t i = 0; i < n; i++)
		p[i] = i;
	uint64_t s0 = r->s[0], s1 = r->s[1], s2 = r->s[2], s3 = r->s[3];
	/* one xoshiro256** output, two swaps: positions i (bound i+1) and i−1
	 * (bound i) */
#define FY_STEP(i)                                                                                                    \
	do {                                                                                                           \
		uint64_t res = rotl(s1 * 5, 7) * 9, t = s1 << 17;                                                      \
		s2 ^= s0, s3 ^= s1, s1 ^= s2, s0 ^= s3, s2 ^= t, s3 = rotl(s3, 45);                                    \
		uint32_t j = (uint32_t)(((res & 0xFFFFFFFFull) * ((uint64_t)(i) + 1)) >> 32);                          \
		uint32_t x = p[i];                                                                                     \
		p[i] = p[j], p[j] = x;                                                                                 \
		j = (uint32_t)(((res >> 32) * (uint64_t)(i)) >> 32);                                                   \
		x = p[(i) - 1];                                                                                        \
		p[(i) - 1] = p[j], p[j] = x;                                                                           \
	} while (0)
	int64_t i = (int64_t)n - 1;
	for (; i >= 4; i -= 4) {
		FY_STEP((uint32_t)i);
		FY_STEP((uint32_t)i - 2);
	}
	if (i >= 2) {
		FY_STEP((uint32_t)i);
		i -= 2;
	}
#undef FY_STEP
	r->s[0] = s0, r->s[1] = s1, r->s[2] = s2, r->s[3] = s3;
	if (i == 1) {
		uint32_t x = (uint32_t)rng_u64(r);
		uint32_t j = (uint32_t)(((uint64_t)x * 2) >> 32);
		uint32_t y = p[1];
		p[1] = p[j], p[j] = y;
	}
}

/* seed_bytes32: bits.SeedBytes(seed, label, 32) into out (qkd_guest.h's
 * ChaCha8 expansion when the host's seed is shorter). */
static void seed_bytes32(qkd_bytes seed, const char *label, uint8_t out[32]) {
	if (seed.n >= 32)
		__builtin_memcpy(out, seed.p, 32);
	else
		qkd_stream(seed, label, out, 32);
}

/* ---- Cascade state (cascade.go: pass, cand, query, cascade) --------------- */

/* node state bits */
#define KNOWN 1   /* Alice's parity of the node is known to Bob */
#define DIFF 2    /* Alice's parity ≠ Bob's parity (valid when known) */
#define QUERIED 4 /* a query for this node is outstanding */
#define APAR 8    /* C only, in root states: Alice's parity of the block */

typedef struct {
	uint32_t b, h, lo, hi;
} cand;

typedef struct {
	cand *v;
	uint32_t n, cap;
} cands;

static inline __attribute__((always_inline)) void cands_push(cands *s, uint32_t b, uint32_t h, uint32_t lo, uint32_t hi) {
	grow((void **)&s->v, &s->cap, s->n + 1, sizeof(cand));
	cand c = {b, h, lo, hi};
	s->v[s->n++] = c;
}

typedef struct {
	uint8_t p;
	uint32_t b, h, lo, hi;
} query;

/* A pass's order: pass 0 is the key itself, a "halves" pass two random
 * halves (cascade.go halves), the others a random permutation. */
enum { ORDER_KEY, ORDER_PERM, ORDER_HALVES };

/* pass: cascade.go's pass, laid out to touch few memory pages:
 *   - a permutation pass keeps perm and its inverse as permutation tables
 *     (ptab: two bytes and a bit per entry; Bob only, Alice needs neither
 *     once bv is built);
 *   - a halves pass keeps no bv: a range's parity is that of the key under
 *     the subset bitmap (or its complement) between the range's first and
 *     last key positions (range_parity); the rank directory has one entry
 *     per eight words; the bitmap is built when first needed (halves,
 *     ensure_sel);
 *   - node states take two bits (st, see node_get), the roots one byte each
 *     in root (Go moves the roots into st when it allocates the tree; here
 *     they stay in root, with Alice's parity of the block in APAR);
 *   - Bob's passes not started yet are not updated by corrections, but
 *     brought up to date when they start (flip, start_pass). */
typedef struct {
	uint32_t k, nb;
	uint32_t ts;    /* tree slots per block: 2·nextpow2(k) */
	int order;      /* ORDER_* */
	ptab perm;      /* ORDER_PERM, Bob: permuted position → key position */
	ptab inv;       /* ORDER_PERM, Bob: key position → permuted position */
	uint64_t *sel;  /* ORDER_HALVES: the first block's positions (NULL: not built) */
	uint32_t *rank; /* ORDER_HALVES: selected bits before word 8i, at i */
	uint8_t par0;   /* ORDER_HALVES: parity of the key's selected bits at the start */
	uint64_t *bv;   /* ORDER_KEY, ORDER_PERM: key in the pass's order */
	uint8_t *st;    /* node states h ≥ 2, block b's heap index h at b·ts+h, two bits each (Bob, lazily) */
	uint8_t *root;  /* root node states (Bob) */
	cands pend;     /* candidates (Bob) */
	cands spare;    /* bobRun's drained candidate list, kept for reuse */
} pass;

static struct {
	double q;
	int role;
	qkd_bytes seed; /* a copy */
	uint8_t perm_seed[32];
	uint32_t n;
	uint64_t *key; /* n bits */
	uint32_t hb; /* high bits per permutation table entry */
	pass ps[PASSES];
	int state;
	int built;    /* Bob: the first message arrived */
	int roots_ok; /* Bob: the first message set every root state */
	uint64_t leaked, corrected;
	uint32_t rounds;

	int cur;
	cands waiting; /* Bob: candidates waiting for answers, with their pass */
	uint8_t *wpass;
	uint32_t wpcap;
	query *queries;
	uint32_t nq, qcap;
	qkd_writer mw; /* message buffer, reused from call to call */
	uint32_t *flips; /* Bob: every corrected position, in order */
	uint32_t nflips, flipcap;
} c;

/* ---- node states ----------------------------------------------------------- */

/* nodes: the node states of block b of a pass, with the block's base index
 * in st computed once. node_get/node_set: the state of node h. Nodes h ≥ 2
 * only ever hold 0, QUERIED, KNOWN or KNOWN|DIFF (a query is made for an
 * unknown node; an answer, an inference or a correction leaves a node known,
 * and a known node's QUERIED bit is never read), so st stores them in two
 * bits: 0, 1 = QUERIED, 2 = KNOWN, 3 = KNOWN|DIFF. */
typedef struct {
	uint8_t *st, *root;
	uint64_t base; /* b·ts */
	uint32_t b;
} nodes;

static inline nodes block_nodes(const pass *p, uint32_t b) {
	nodes v = {p->st, p->root, (uint64_t)b * p->ts, b};
	return v;
}
static inline __attribute__((always_inline)) uint8_t node_get(nodes v, uint32_t h) {
	if (h == 1)
		return v.root[v.b];
	uint64_t i = v.base + h;
	uint8_t code = (uint8_t)(v.st[i >> 2] >> (2 * (i & 3)) & 3);
	if (code & 2)
		return (uint8_t)(KNOWN | (code & 1 ? DIFF : 0));
	return code ? QUERIED : 0;
}
static inline __attribute__((always_inline)) void node_set(nodes v, uint32_t h, uint8_t s) {
	if (h == 1) {
		v.root[v.b] = s;
		return;
	}
	uint64_t i = v.base + h;
	uint8_t code = s & KNOWN ? (uint8_t)(2 | (s & DIFF ? 1 : 0)) : (s & QUERIED ? 1 : 0);
	uint8_t *q = &v.st[i >> 2];
	*q = (uint8_t)((*q & ~(3 << (2 * (i & 3)))) | code << (2 * (i & 3)));
}

/* tree: pass.tree — allocates the node states on first use. */
static void tree(pass *p) {
	if (!p->st)
		p->st = must_alloc(((uint64_t)p->nb * p->ts + 3) / 4 + 1);
}

/* ---- pass set-up (cascade.go blockSizes, build, halves) ------------------- */

/* block_sizes: cascade.blockSizes. */
static void block_sizes(void) {
	for (int i = 0; i < PASSES; i++) {
		int64_t k = block(c.q, (int64_t)c.n, i);
		int64_t nmax = c.n > 1 ? (int64_t)c.n : 1;
		k = k < 1 ? 1 : k;
		k = k > nmax ? nmax : k;
		pass *p = &c.ps[i];
		p->k = (uint32_t)k;
		p->nb = (uint32_t)(((uint64_t)c.n + (uint64_t)k - 1) / (uint64_t)k);
		p->ts = 2u << len32(p->k - 1);
	}
}

static void pass_label(char label[32], int i) {
	/* fmt.Sprintf("qkdkms/cascade/pass/%d", i) */
	const char *pre = "qkdkms/cascade/pass/";
	int l = 0;
	while (pre[l])
		label[l] = pre[l], l++;
	if (i >= 10)
		label[l++] = (char)('0' + i / 10);
	label[l++] = (char)('0' + i % 10);
	label[l] = 0;
}

/* halves: cascade.halves — a random subset S (the larger of a random subset
 * and its complement, one random bit per position) followed by the rest,
 * each in key order; the block size becomes |S|. Computes the parity of the
 * key's bits in S (par0); keeps the bitmap and its rank directory if store. */
static void halves(pass *p, int i, int store) {
	char label[32];
	rng r;
	pass_label(label, i);
	rng_new(&r, c.perm_seed, 32, label);
	uint32_t n = c.n, nw = qkd_words(n);
	uint64_t tail = n % 64 == 0 ? ~0ull : (1ull << (n % 64)) - 1;
	uint64_t *sel = store ? must_alloc((uint64_t)nw * 8) : NULL;
	uint64_t ones = 0, x = 0;
	uint32_t w = 0; /* n > 1: nw ≥ 1 */
#define SEL1(tailmask)                                                                                                \
	do {                                                                                                           \
		uint64_t m = rng_u64(&r) & (tailmask);                                                                 \
		ones += (uint64_t)popcount64(m);                                                                       \
		x ^= c.key[w] & m;                                                                                     \
		if (sel)                                                                                               \
			sel[w] = m;                                                                                    \
		w++;                                                                                                   \
	} while (0)
	while (w + 4 < nw) {
		SEL1(~0ull);
		SEL1(~0ull);
		SEL1(~0ull);
		SEL1(~0ull);
	}
	while (w + 1 < nw)
		SEL1(~0ull);
	SEL1(tail);
#undef SEL1
	uint8_t ps = (uint8_t)(popcount64(x) & 1);
	if (2 * ones < n) { /* the complement: S is the other half */
		ones = n - ones;
		ps ^= vec_parity(c.key, 0, n);
		if (sel) {
			for (uint32_t w = 0; w < nw; w++)
				sel[w] = ~sel[w];
			sel[nw - 1] &= tail;
		}
	}
	p->order = ORDER_HALVES;
	p->par0 = ps;
	p->k = (uint32_t)ones;
	p->nb = (uint32_t)(((uint64_t)n + p->k - 1) / p->k);
	p->ts = 2u << len32(p->k - 1);
	if (sel) {
		p->sel = sel;
		p->rank = must_alloc(((uint64_t)nw / 8 + 1) * 4);
		uint32_t acc = 0;
		for (uint32_t w = 0; w < nw; w++) {
			if (w % 8 == 0)
				p->rank[w / 8] = acc;
			acc += (uint32_t)popcount64(sel[w]);
		}
	}
}

/* gather: bv[t] = key[perm[t]], one output word at a time. */
static void gather(uint64_t *bv, const uint32_t *perm) {
	uint32_t n = c.n, full = n / 64;
	const uint64_t *kw = c.key;
	for (uint32_t w = 0; w < full; w++) {
		const uint32_t *pt = perm + 64 * w;
		uint64_t acc = 0;
#pragma clang loop unroll(full)
		for (uint32_t i = 0; i < 64; i++)
			acc |= (kw[pt[i] >> 6] >> (pt[i] & 63) & 1) << i;
		bv[w] = acc;
	}
	if (n % 64) {
		uint64_t acc = 0;
		for (uint32_t t = 64 * full; t < n; t++)
			acc |= (kw[perm[t] >> 6] >> (perm[t] & 63) & 1) << (t & 63);
		bv[full] = acc;
	}
}

/* The 32-bit shuffle and the low halves written over it share memory. */
typedef uint32_t __attribute__((may_alias)) u32_alias;
typedef uint16_t __attribute__((may_alias)) u16_alias;

/* top_count: cascade.topCount — parities in Alice's first message. */
static uint32_t top_count(void) {
	uint32_t t = 0;
	for (int i = 0; i < PASSES; i++) {
		t += c.ps[i].nb;
		if (i > 0 && c.ps[i].nb > 0)
			t--;
	}
	return t;
}

/* build: cascade.build — every pass's order from the permutation seed. */
static void build(const uint8_t perm_seed[32]) {
	__builtin_memcpy(c.perm_seed, perm_seed, 32);
	c.hb = c.n > 65536 ? (uint32_t)len32(c.n - 1) - 16 : 0;
	for (int i = 0; i < PASSES; i++) {
		pass *p = &c.ps[i];
		if (i == 0) {
			p->order = ORDER_KEY;
			p->bv = c.key; /* shares the key's words, as in Go */
		} else if ((uint64_t)2 * p->k >= c.n && c.n > 1) {
			halves(p, i, 0); /* the bitmap is built when first needed */
		} else {
			char label[32];
			rng r;
			pass_label(label, i);
			rng_new(&r, perm_seed, 32, label);
			uint32_t n = c.n, hb = c.hb;
			p->order = ORDER_PERM;
			p->bv = must_alloc((uint64_t)qkd_words(n) * 8 + 8);
			/* the shuffle's 32-bit words; Bob then keeps perm and its
			 * inverse as tables whose low halves fill the same pages,
			 * perm.lo over the front, inv.lo behind it, the high bits
			 * after */
			uint64_t half = ((uint64_t)n * 2 + 7) & ~7ull; /* one table's low halves */
			uint64_t lo = 2 * half, hib = hb ? (((uint64_t)n * hb + 7) / 8 + 15) & ~7ull : 0;
			uint64_t size = c.role == QKD_BOB ? lo + 2 * hib : lo;
			uint8_t *mem = must_alloc(size);
			rng_perm(&r, n, (uint32_t *)mem);
			gather(p->bv, (const uint32_t *)mem);
			if (c.role != QKD_BOB) {
				qkd_free(mem, (size_t)size); /* the next pass's shuffle reuses it */
			} else {
				ptab perm = {(uint16_t *)mem, hb ? (uint64_t *)(mem + lo) : NULL, hb};
				ptab inv = {(uint16_t *)(mem + half), hb ? (uint64_t *)(mem + lo + hib) : NULL, hb};
				/* low halves in place: lo[t] (bytes 2t, 2t+1) only covers
				 * 32-bit entries already read */
				const u32_alias *a32 = (const u32_alias *)mem;
				u16_alias *a16 = (u16_alias *)mem;
				for (uint32_t t = 0; t < n; t++) {
					uint32_t v = a32[t];
					a16[t] = (uint16_t)v;
					if (hb)
						packed_set(perm.hi, hb, t, v >> 16);
				}
				uint32_t t = 0;
				for (; t + 4 <= n; t += 4) {
					ptab_set(inv, ptab_get(perm, t), t);
					ptab_set(inv, ptab_get(perm, t + 1), t + 1);
					ptab_set(inv, ptab_get(perm, t + 2), t + 2);
					ptab_set(inv, ptab_get(perm, t + 3), t + 3);
				}
				for (; t < n; t++)
					ptab_set(inv, ptab_get(perm, t), t);
				p->perm = perm, p->inv = inv;
			}
		}
		if (c.role == QKD_BOB) {
			p->root = must_alloc(p->nb ? p->nb : 1);
			/* room for every block's root as a candidate up front: growing
			 * by doubling leaves the old arrays behind (memory never used
			 * costs nothing) */
			grow((void **)&p->pend.v, &p->pend.cap, p->nb + 16, sizeof(cand));
			grow((void **)&p->spare.v, &p->spare.cap, p->nb + 16, sizeof(cand));
		}
	}
	if (c.role == QKD_BOB) {
		uint32_t m = top_count() + 16;
		grow((void **)&c.waiting.v, &c.waiting.cap, m, sizeof(cand));
		grow((void **)&c.wpass, &c.wpcap, m, 1);
		grow((void **)&c.queries, &c.qcap, m, sizeof(query));
		grow((void **)&c.flips, &c.flipcap, c.n / 16 + 16, 4);
	}
}

/* ensure_sel: Alice's subset bitmap of a halves pass, on first use. */
static void ensure_sel(pass *p) {
	if (p->order == ORDER_HALVES && !p->sel)
		halves(p, (int)(p - c.ps), 1);
}

/* block_range: pass.blockRange. */
static void block_range(const pass *p, uint32_t b, uint32_t *lo, uint32_t *hi) {
	*lo = b * p->k;
	*hi = c.n - *lo < p->k ? c.n : *lo + p->k;
}

/* block_parity: pass.blockParity — the parity of the key's bits in top-level
 * block b (called when the pass is built or started: a halves pass's par0
 * is that of the key then). */
static uint8_t block_parity(const pass *p, uint32_t b) {
	if (p->order == ORDER_HALVES) {
		if (b == 0)
			return p->par0;
		return p->par0 ^ vec_parity(c.key, 0, c.n);
	}
	uint32_t lo, hi;
	block_range(p, b, &lo, &hi);
	return vec_parity(p->bv, lo, hi);
}

/* idx: pass.idx — a key position's position in the pass's order (Bob). */
static uint32_t idx(const pass *p, uint32_t x) {
	switch (p->order) {
	case ORDER_PERM:
		return ptab_get(p->inv, x);
	case ORDER_HALVES: {
		uint32_t w = x >> 6;
		uint64_t m = p->sel[w];
		uint64_t below = (1ull << (x & 63)) - 1;
		uint32_t r = p->rank[w / 8] + (uint32_t)popcount64(m & below);
		for (uint32_t v = w & ~7u; v < w; v++)
			r += (uint32_t)popcount64(p->sel[v]);
		if (m >> (x & 63) & 1)
			return r;
		return p->k + x - r;
	}
	}
	return x;
}

/* pos: pass.pos — a position in the pass's order to the key position. */
static uint32_t pos(const pass *p, uint32_t t) {
	switch (p->order) {
	case ORDER_PERM:
		return ptab_get(p->perm, t);
	case ORDER_HALVES: {
		int sel = t < p->k;
		if (!sel)
			t -= p->k;
		/* the selected (or unselected) bits before word w */
#define CNT(w) (sel ? p->rank[(w) / 8] : 64 * (w) - p->rank[(w) / 8])
		/* the last eight-word group whose count is ≤ t, then the word */
		uint32_t nw = qkd_words(c.n), lo = 0, hi = (nw - 1) / 8;
		while (lo < hi) {
			uint32_t mid = (lo + hi + 1) / 2;
			if (CNT(8 * mid) > t)
				hi = mid - 1;
			else
				lo = mid;
		}
#undef CNT
		uint32_t w = 8 * lo;
		uint32_t cnt = sel ? p->rank[lo] : 64 * w - p->rank[lo];
		for (;;) {
			uint64_t m = sel ? p->sel[w] : ~p->sel[w];
			uint32_t k = (uint32_t)popcount64(m);
			if (cnt + k > t) {
				for (uint32_t r = t - cnt; r > 0; r--)
					m &= m - 1;
				return w * 64 + (uint32_t)__builtin_ctzll(m);
			}
			cnt += k;
			w++;
		}
	}
	}
	return t;
}

/* range_parity: the parity of positions [lo, hi) of the pass's order
 * (p.bv.Parity(lo, hi) in Go), the range inside one top-level block. For a
 * halves pass: the key's bits under the subset bitmap (block 0) or its
 * complement (block 1) between the range's first and last key positions. */
static uint8_t range_parity(const pass *p, uint32_t lo, uint32_t hi) {
	if (p->order != ORDER_HALVES)
		return vec_parity(p->bv, lo, hi);
	if (hi <= lo)
		return 0;
	uint32_t xl = pos(p, lo), xh = pos(p, hi - 1);
	uint64_t flip = lo < p->k ? 0 : ~0ull; /* complement the bitmap for block 1 */
	uint32_t wl = xl >> 6, wh = xh >> 6;
	uint64_t ml = ~0ull << (xl & 63), mh = ~0ull >> (63 - (xh & 63));
	const uint64_t *kw = c.key, *sw = p->sel;
	if (wl == wh)
		return (uint8_t)(popcount64(kw[wl] & (sw[wl] ^ flip) & ml & mh) & 1);
	uint64_t x = kw[wl] & (sw[wl] ^ flip) & ml;
	uint32_t i = wl + 1;
	for (; i + 4 <= wh; i += 4)
		x ^= (kw[i] & (sw[i] ^ flip)) ^ (kw[i + 1] & (sw[i + 1] ^ flip)) ^ (kw[i + 2] & (sw[i + 2] ^ flip)) ^
		     (kw[i + 3] & (sw[i + 3] ^ flip));
	for (; i < wh; i++)
		x ^= kw[i] & (sw[i] ^ flip);
	x ^= kw[wh] & (sw[wh] ^ flip) & mh;
	return (uint8_t)(popcount64(x) & 1);
}

/* node_range: pass.nodeRange — the range of node h of block b, or 0 if h does
 * not name a node of that block. */
static int node_range(const pass *p, uint32_t b, uint32_t h, uint32_t *lo, uint32_t *hi) {
	if (b >= p->nb || h < 1 || h >= p->ts)
		return 0;
	block_range(p, b, lo, hi);
	for (int i = len32(h) - 2; i >= 0; i--) {
		if (*hi - *lo < 2)
			return 0;
		uint32_t mid = *lo + (*hi - *lo) / 2; /* = (lo+hi)/2 without overflow */
		if ((h >> i & 1) == 0)
			*hi = mid;
		else
			*lo = mid;
	}
	return 1;
}

/* ---- the protocol (cascade.go Step and below) ------------------------------ */

static void metrics(qkd_result *res) {
	res->leaked = c.leaked;
	res->corrected = c.corrected;
	res->rounds = c.rounds;
}

/* alice_first: cascade.aliceFirst — the permutation seed and every pass's
 * top-level parities except the last block's of passes ≥ 2. */
static int alice_first(qkd_result *res) {
	uint8_t perm_seed[32];
	seed_bytes32(c.seed, "qkdkms/cascade/perm", perm_seed);
	build(perm_seed);
	uint32_t cnt = top_count();
	uint64_t *par = must_alloc((uint64_t)qkd_words(cnt) * 8 + 8);
	uint32_t idx = 0;
	for (int i = 0; i < PASSES; i++) {
		pass *p = &c.ps[i];
		uint32_t nb = p->nb;
		if (i > 0 && nb > 0)
			nb--; /* the last block's parity follows from the total parity */
		for (uint32_t b = 0; b < nb; b++) {
			if (block_parity(p, b))
				vec_set1(par, idx);
			idx++;
		}
	}
	qkd_w_reserve(&res->msg, 32 + 4 + (cnt + 7) / 8);
	qkd_w_raw(&res->msg, perm_seed, 32);
	qkd_w_u32(&res->msg, cnt);
	qkd_w_raw(&res->msg, par, (cnt + 7) / 8);
	c.leaked += cnt;
	c.rounds++;
	res->has_msg = 1;
	metrics(res);
	return QKD_OK;
}

static void output_key(qkd_result *res) {
	qkd_w_reserve(&res->out, 4 + (c.n + 7) / 8);
	qkd_w_u32(&res->out, c.n);
	qkd_w_raw(&res->out, c.key, (c.n + 7) / 8);
}

/* alice_answer: cascade.aliceAnswer — answers a batch of parity queries, or
 * finishes on an empty batch. A batch is u32 count and count × (u8 pass,
 * u32 block, u32 node); Go reads it query by query and fails at the first
 * short or invalid one, or on trailing bytes: here the length is checked
 * first (exactly 4 + 9·count bytes), with the same outcome. */
static int alice_answer(qkd_bytes msg, qkd_result *res) {
	qkd_reader r = qkd_read(msg);
	uint32_t cnt = qkd_r_u32(&r);
	if (r.err || cnt > msg.n / 9)
		return qkd_fail("step: protocol violation: cascade: query batch");
	if (cnt == 0) {
		if (qkd_r_done(&r))
			return qkd_fail("step: protocol violation: cascade: final message: trailing bytes");
		c.state = 2;
		output_key(res);
		res->done = 1;
		metrics(res);
		return QKD_OK;
	}
	if (msg.n - 4 != 9 * cnt)
		return qkd_fail("step: protocol violation: cascade: query batch: short or trailing bytes");
	qkd_writer *w = &c.mw;
	uint32_t nbytes = (cnt + 7) / 8;
	w->n = 0;
	qkd_w_reserve(w, 4 + nbytes);
	qkd_w_u32(w, cnt);
	uint8_t *ans = w->p + w->n; /* the answer bits, written in place */
	__builtin_memset(ans, 0, nbytes);
	const uint8_t *q = msg.p + 4;
	for (uint32_t i = 0; i < cnt; i++, q += 9) {
		uint8_t pi = q[0];
		uint32_t b = qkd_le32(q + 1), h = qkd_le32(q + 5);
		if (pi >= PASSES)
			return qkd_fail("step: protocol violation: cascade: query names no pass");
		pass *p = &c.ps[pi];
		uint32_t lo, hi;
		if (!node_range(p, b, h, &lo, &hi))
			return qkd_fail("step: protocol violation: cascade: query names no block");
		ensure_sel(p);
		ans[i >> 3] |= (uint8_t)(range_parity(p, lo, hi) << (i & 7));
	}
	w->n += nbytes;
	res->msg = *w;
	c.leaked += cnt;
	c.rounds++;
	res->has_msg = 1;
	metrics(res);
	return QKD_OK;
}

/* bob_first: cascade.bobFirst — takes the permutation seed and Alice's
 * top-level parities. */
static int bob_first(qkd_bytes msg) {
	qkd_reader r = qkd_read(msg);
	const uint8_t *perm_seed = qkd_r_raw(&r, 32);
	bitsview par = r_bits(&r);
	if (qkd_r_done(&r))
		return qkd_fail("step: protocol violation: cascade: first message: malformed");
	build(perm_seed);
	c.built = 1;
	if (par.n != top_count())
		return qkd_fail("step: protocol violation: cascade: first message has the wrong number of parities");
	c.leaked += par.n;
	uint8_t total = 0;
	uint32_t idx = 0;
	for (int i = 0; i < PASSES; i++) {
		pass *p = &c.ps[i];
		uint8_t acc = 0;
		for (uint32_t b = 0; b < p->nb; b++) {
			uint8_t a;
			if (i > 0 && b == p->nb - 1)
				a = total ^ acc;
			else
				a = bits_get(par, idx++);
			acc ^= a;
			uint8_t s = KNOWN;
			if (a != block_parity(p, b))
				s |= DIFF;
			p->root[b] = s | (a ? APAR : 0);
		}
		if (i == 0)
			total = acc;
	}
	c.cur = -1;
	c.roots_ok = 1;
	return QKD_OK;
}

/* bob_answers: cascade.bobAnswers — records Alice's answers to the last
 * batch and requeues the candidates that waited for them. */
static int bob_answers(qkd_bytes msg) {
	qkd_reader r = qkd_read(msg);
	bitsview ans = r_bits(&r);
	if (qkd_r_done(&r) || ans.n != c.nq)
		return qkd_fail("step: protocol violation: cascade: answers: malformed or wrong count");
	c.leaked += ans.n;
	for (uint32_t i = 0; i < c.nq; i++) {
		const query *q = &c.queries[i];
		pass *p = &c.ps[q->p];
		ensure_sel(p);
		uint8_t s = KNOWN;
		if (bits_get(ans, i) != range_parity(p, q->lo, q->hi))
			s |= DIFF;
		tree(p);
		node_set(block_nodes(p, q->b), q->h, s);
	}
	c.nq = 0;
	for (uint32_t i = 0; i < c.waiting.n; i++) {
		const cand *w = &c.waiting.v[i];
		cands_push(&c.ps[c.wpass[i]].pend, w->b, w->h, w->lo, w->hi);
	}
	c.waiting.n = 0;
	return QKD_OK;
}

/* flip: cascade.flip — corrects Bob's bit at key position x and updates
 * every pass: the states of the known nodes containing it change parity,
 * and those that become odd in passes already started are candidates
 * again. Two shortcuts, neither changing a result:
 *   - Passes not started yet (j > cur) are skipped: there a correction only
 *     flips a bit of bv and a root's DIFF (the pass has no tree and no
 *     candidates yet), and start_pass recomputes both from the key.
 *   - The walk down a block's tree stops at the first unknown node: Go
 *     walks on, but a node only becomes known when its parent is (a root, an
 *     answer to a query for a child of a known node, an inference from a
 *     known parent), so no node below an unknown one is known. */
static void flip(uint32_t x) {
	vec_flip(c.key, x);
	c.corrected++;
	grow((void **)&c.flips, &c.flipcap, c.nflips + 1, 4);
	c.flips[c.nflips++] = x;
	for (int j = 0; j < PASSES && j <= c.cur; j++) {
		pass *p = &c.ps[j];
		uint32_t b, t = 0;
		if (p->order == ORDER_HALVES && !p->st) {
			/* the block only: 0 if x is in the subset, else 1 */
			ensure_sel(p);
			b = (p->sel[x >> 6] >> (x & 63) & 1) ? 0 : 1;
		} else {
			t = idx(p, x);
			if (j > 0 && p->bv)
				vec_flip(p->bv, t);
			b = t / p->k;
		}
		uint32_t lo, hi;
		block_range(p, b, &lo, &hi);
		if (!p->st) {
			p->root[b] ^= DIFF;
			if (p->root[b] & DIFF) /* j <= c.cur */
				cands_push(&p->pend, b, 1, lo, hi);
			continue;
		}
		nodes v = block_nodes(p, b);
		uint32_t h = 1;
		for (;;) {
			uint8_t s = node_get(v, h);
			if (!(s & KNOWN))
				break;
			s ^= DIFF;
			node_set(v, h, s);
			if (s & DIFF) /* j <= c.cur */
				cands_push(&p->pend, b, h, lo, hi);
			if (hi - lo <= 1)
				break;
			uint32_t mid = lo + (hi - lo) / 2;
			if (t < mid)
				h = 2 * h, hi = mid;
			else
				h = 2 * h + 1, lo = mid;
		}
	}
}

/* start_pass brings pass j up to date when it becomes the current pass
 * (flip skips passes not started), as Go's flips would have left it: a
 * permutation pass replays the corrections on bv and the roots' DIFF; a
 * halves pass's roots get DIFF where Alice's parity differs from the
 * block's now. */
static void start_pass(int j) {
	pass *p = &c.ps[j];
	if (!c.roots_ok || j == 0)
		return; /* pass 0 starts before any correction */
	if (p->order == ORDER_PERM) {
		for (uint32_t i = 0; i < c.nflips; i++) {
			uint32_t t = ptab_get(p->inv, c.flips[i]);
			vec_flip(p->bv, t);
			p->root[t / p->k] ^= DIFF;
		}
	} else if (p->order == ORDER_HALVES) {
		halves(p, j, 0); /* par0 of the key now */
		for (uint32_t b = 0; b < p->nb; b++) {
			uint8_t a = p->root[b] & APAR ? 1 : 0;
			p->root[b] = (uint8_t)(APAR * a | KNOWN | (a != block_parity(p, b) ? DIFF : 0));
		}
	}
}

/* descend: cascade.descend — runs the binary search of candidate cd of pass
 * j as far as known parities allow: corrects an error, drops the candidate
 * (even parity) or parks it waiting for a query (returns 1). */
static int descend(int j, cand cd) {
	pass *p = &c.ps[j];
	tree(p);
	ensure_sel(p);
	nodes v = block_nodes(p, cd.b);
	uint32_t h = cd.h;
	if ((node_get(v, h) & (KNOWN | DIFF)) != (KNOWN | DIFF))
		return 0;
	uint32_t lo = cd.lo, hi = cd.hi;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		uint32_t l = 2 * h, r = 2 * h + 1;
		uint8_t sl = node_get(v, l), sr = node_get(v, r);
		if (!(sl & KNOWN)) {
			if (!(sr & KNOWN)) {
				if (!(sl & QUERIED)) {
					node_set(v, l, sl | QUERIED);
					grow((void **)&c.queries, &c.qcap, c.nq + 1, sizeof(query));
					query q = {(uint8_t)j, cd.b, l, lo, mid};
					c.queries[c.nq++] = q;
				}
				cands_push(&c.waiting, cd.b, h, lo, hi);
				grow((void **)&c.wpass, &c.wpcap, c.waiting.n, 1);
				c.wpass[c.waiting.n - 1] = (uint8_t)j;
				return 1;
			}
			/* infer left from parent (odd) and right */
			sl = KNOWN | (DIFF ^ (sr & DIFF));
			node_set(v, l, sl);
		}
		if (sl & DIFF) {
			h = l, hi = mid;
			continue;
		}
		if (!(sr & KNOWN))
			node_set(v, r, KNOWN | DIFF);
		h = r, lo = mid;
	}
	flip(pos(p, lo));
	return 0;
}

/* bob_run: cascade.bobRun — makes all progress possible without new
 * parities and returns the next query batch (every pending search of every
 * started pass), or the final message. */
static int bob_run(qkd_result *res) {
	for (;;) {
		/* cascade.go: at most n corrections with Alice's true parities;
		 * inconsistent ones could keep the searches correcting for ever. */
		if (c.corrected > c.n)
			return qkd_fail("step: protocol violation: cascade: more corrections than key bits: the peer's parities are inconsistent");
		int j = -1;
		for (int i = 0; i <= c.cur && i < PASSES; i++) {
			if (c.ps[i].pend.n > 0) {
				j = i;
				break;
			}
		}
		if (j < 0) {
			if (c.nq > 0)
				break;
			if (c.cur + 1 >= PASSES) {
				/* done */
				qkd_w_u32(&res->msg, 0);
				c.rounds++;
				c.state = 2;
				output_key(res);
				res->has_msg = 1;
				res->done = 1;
				metrics(res);
				return QKD_OK;
			}
			c.cur++;
			start_pass(c.cur);
			pass *p = &c.ps[c.cur];
			for (uint32_t b = 0; b < p->nb; b++) {
				if (p->root[b] & DIFF) { /* p.rootState(b) */
					uint32_t lo, hi;
					block_range(p, b, &lo, &hi);
					cands_push(&p->pend, b, 1, lo, hi);
				}
			}
			continue;
		}
		pass *p = &c.ps[j];
		/* list := p.pend; p.pend = nil — the drained list's buffer becomes
		 * the next spare */
		cands list = p->pend;
		p->pend = p->spare;
		p->pend.n = 0;
		for (uint32_t i = 0; i < list.n; i++)
			descend(j, list.v[i]);
		p->spare = list;
	}
	qkd_writer *w = &c.mw;
	w->n = 0;
	qkd_w_reserve(w, 4 + 9 * c.nq);
	qkd_w_u32(w, c.nq);
	if (!w->err) {
		uint8_t *o = w->p + w->n;
		for (uint32_t i = 0; i < c.nq; i++, o += 9) {
			const query *q = &c.queries[i];
			o[0] = q->p;
			__builtin_memcpy(o + 1, &q->b, 4); /* little-endian */
			__builtin_memcpy(o + 5, &q->h, 4);
		}
		w->n += 9 * c.nq;
	}
	res->msg = *w;
	c.rounds++;
	res->has_msg = 1;
	metrics(res);
	return QKD_OK;
}

/* ---- the plugin (cascade.go NewVariant and Step) ---------------------------- */

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	qkd_reader r = qkd_read(params);
	double q = qkd_r_f64(&r);
	if (qkd_r_done(&r) || q != q || q < 0 || q > 0.5)
		return qkd_fail("step: bad parameters: cascade params: want f64 QBER in [0, 0.5]");
	q = q < 0.001 ? 0.001 : q;
	q = q > 0.3 ? 0.3 : q;
	c.q = q;
	c.role = role;
	uint8_t *s = must_alloc(seed.n ? seed.n : 1);
	if (seed.n)
		__builtin_memcpy(s, seed.p, seed.n);
	c.seed.p = s, c.seed.n = seed.n;
	return QKD_OK;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	if (c.state == 0 && !has_peer) {
		qkd_reader r = qkd_read(in);
		qkd_vec key;
		qkd_r_vec(&r, &key);
		if (qkd_r_done(&r))
			return qkd_fail("step: bad input: cascade input: malformed vec");
		c.key = key.w; /* already a copy (Go: Clone) */
		c.n = key.n;
		block_sizes();
		c.state = 1;
		if (c.role == QKD_BOB) {
			metrics(res);
			return QKD_OK;
		}
		return alice_first(res);
	}
	if (c.state == 1 && has_peer) {
		c.rounds++;
		int st;
		if (c.role == QKD_ALICE) {
			st = alice_answer(peer, res);
		} else {
			if (!c.built)
				st = bob_first(peer);
			else
				st = bob_answers(peer);
			if (st == QKD_OK)
				st = bob_run(res);
		}
		/* Nothing refers to the message any more (ABI.md §3: the guest may
		 * free it): when no allocation followed it, the next message
		 * reuses its memory instead of new pages. */
		qkd_free((void *)peer.p, peer.n);
		return st;
	}
	return qkd_fail("step: protocol violation: cascade: unexpected call");
}

#endif
