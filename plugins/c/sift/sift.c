/*
 * sift.c — the sift step of BB84 as a freestanding C plugin (plugins/ABI.md):
 * bit for bit the Go step plugins/steps/sift (same output, messages, metrics,
 * and errors worded as Go words them). The protocol (sift.go's package
 * comment):
 *
 *   params: u8 K ≥ 1 (intensity levels). Input: u32 n, ceil(n/8) bits,
 *   ceil(n/8) bases (1 = X), and for Alice n intensities (< K). Bob sends
 *   his bases (vec); Alice answers with her bases (vec) and intensities
 *   (bytes) and is done; Bob is done on her answer. Both keep the positions
 *   where the bases agree. Output: u8 K, vec Z bits, bytes Z intensities,
 *   vec X bits, bytes X intensities. Two rounds; nothing leaked.
 *
 * The inputs and messages are read in place (the host's buffers are never
 * freed by this plugin, so they outlive the calls); the split goes eight
 * positions at a time with SIMD128 swizzles.
 */
#include <wasm_simd128.h>

#include "qkd_guest.h"

static struct {
	int role;
	uint32_t k;
	int state; /* 0 fresh, 1 input read, 2 done */
	uint32_t rounds;
	uint32_t n, nb;                      /* detections, ceil(n/8) */
	const uint8_t *bits, *bases, *ints; /* ints: Alice's only */
} st;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	qkd_reader r = qkd_read(params);
	uint8_t k = qkd_r_u8(&r);
	if (qkd_r_done(&r) || k == 0)
		return qkd_fail("step: bad parameters: sift params: want u8 K > 0");
	st.role = role, st.k = k;
	return QKD_OK;
}

/* bad_intensity: the index of the first intensity ≥ K in b[0..n), or n. */
static uint32_t bad_intensity(const uint8_t *b, uint32_t n) {
	uint8_t k = (uint8_t)st.k, any = 0;
	for (uint32_t i = 0; i < n; i++) /* vectorized: no early exit */
		any |= b[i] >= k;
	if (!any)
		return n;
	uint32_t i = 0;
	while (b[i] < k)
		i++;
	return i;
}

/* comp[m]: byte j is the position (0…7) of the j-th set bit of m, 0x80 (a
 * zero lane in a swizzle) past popcount(m): the swizzle that packs the
 * lanes m keeps to the front. */
static uint64_t comp[256];

static void comp_init(void) {
	for (uint32_t m = 0; m < 256; m++) {
		uint64_t e = 0x8080808080808080ull;
		for (uint32_t b = 0, j = 0; b < 8; b++)
			if (m >> b & 1) {
				e = (e & ~(0xFFull << 8 * j)) | (uint64_t)b << 8 * j;
				j++;
			}
		comp[m] = e;
	}
}

/* keep appends the positions m keeps of one group of eight: intensities iv
 * (lanes 0–7) at ib[*ic] (writing 8 bytes: up to 7 past the kept ones),
 * bits bv (lanes 0–7, 0 or 0xFF) at bit *bc of bb (bytes, zero so far). */
static inline __attribute__((always_inline)) void keep(uint32_t m, v128_t iv, v128_t bv, uint8_t *ib, uint32_t *ic,
                                                       uint8_t *bb, uint32_t *bc) {
	v128_t idx = wasm_v128_load64_zero(&comp[m]);
	wasm_v128_store64_lane(ib + *ic, wasm_i8x16_swizzle(iv, idx), 0);
	uint32_t c = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_swizzle(bv, idx)) & 0xFF, pos = *bc;
	uint32_t v = c << (pos & 7);
	bb[pos >> 3] |= (uint8_t)v, bb[(pos >> 3) + 1] |= (uint8_t)(v >> 8);
	uint32_t k = (uint32_t)__builtin_popcount(m);
	*ic += k, *bc += k;
}

/* split writes Sifted (u8 K, vec Z, bytes ZInt, vec X, bytes XInt) of the
 * positions where the own and the peer's bases agree into res->out; ints
 * are the intensities of all n positions (Alice's). Eight positions at a
 * time: the intensities and bits kept packed by one swizzle each (comp),
 * the intensities straight into the output. */
static int split(const uint8_t *peer_bases, const uint8_t *ints, qkd_result *res) {
	uint32_t n = st.n, nb = st.nb, nw = (n + 63) / 64;
	uint64_t nz = 0, nx = 0;
	for (uint32_t w = 0; w < nw; w++) {
		uint64_t a = qkd_word_at(st.bases, nb, w), p = qkd_word_at(peer_bases, nb, w);
		uint64_t valid = n - 64 * w >= 64 ? ~0ull : (1ull << (n - 64 * w)) - 1;
		uint64_t eq = ~(a ^ p) & valid;
		nz += (uint64_t)__builtin_popcountll(eq & ~a);
		nx += (uint64_t)__builtin_popcountll(eq & a);
	}
	/* + 8: the last group's intensities write up to 7 bytes past the end */
	uint64_t size = 17 + (nz + 7) / 8 + nz + (nx + 7) / 8 + nx + 8;
	uint8_t *zb = qkd_malloc((size_t)(nz + 7) / 8 + 16), *xb = qkd_malloc((size_t)(nx + 7) / 8 + 16);
	if (size > 0xFFFF0000u || !zb || !xb)
		return qkd_fail("out of memory");
	qkd_writer *o = &res->out;
	qkd_w_reserve(o, (uint32_t)size);
	if (o->err)
		return qkd_fail("out of memory");
	if (!comp[1])
		comp_init();
	/* the layout; the Z intensities' last group writes over the X header,
	 * written after them */
	uint32_t zint = 5 + (uint32_t)((nz + 7) / 8) + 4;
	uint32_t xint = zint + (uint32_t)nz + 4 + (uint32_t)((nx + 7) / 8) + 4;
	uint8_t *zi = o->p + zint, *xi = o->p + xint;
	uint32_t zc = 0, xc = 0, zbc = 0, xbc = 0;
	const v128_t lanebit = wasm_u8x16_make(1, 2, 4, 8, 16, 32, 64, 128, 0, 0, 0, 0, 0, 0, 0, 0);
	uint32_t g = 0;
	for (; g < n / 8; g++) {
		uint32_t a = st.bases[g], eq = ~(a ^ peer_bases[g]) & 0xFF;
		v128_t iv = wasm_v128_load64_zero(ints + 8 * g);
		v128_t bv = wasm_i8x16_ne(wasm_v128_and(wasm_i8x16_splat((int8_t)st.bits[g]), lanebit), wasm_i8x16_splat(0));
		keep(eq & ~a, iv, bv, zi, &zc, zb, &zbc);
		keep(eq & a, iv, bv, xi, &xc, xb, &xbc);
	}
	for (uint32_t i = 8 * g; i < n; i++) { /* the last n % 8 positions */
		uint32_t a = st.bases[g] >> (i % 8) & 1, bit = st.bits[g] >> (i % 8) & 1;
		if (a != (peer_bases[g] >> (i % 8) & 1u))
			continue;
		if (a == 0)
			zb[zbc >> 3] |= (uint8_t)(bit << (zbc & 7)), zbc++, zi[zc++] = ints[i];
		else
			xb[xbc >> 3] |= (uint8_t)(bit << (xbc & 7)), xbc++, xi[xc++] = ints[i];
	}
	qkd_w_u8(o, (uint8_t)st.k);
	qkd_w_u32(o, zc);
	qkd_w_raw(o, zb, (zc + 7) / 8);
	qkd_w_u32(o, zc);
	o->n += zc; /* the Z intensities, in place */
	qkd_w_u32(o, xc);
	qkd_w_raw(o, xb, (xc + 7) / 8);
	qkd_w_u32(o, xc);
	o->n += xc;
	return QKD_OK;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	char eb[80];
	if (st.state == 0) {
		if (has_peer)
			return qkd_fail("step: protocol violation: sift: peer message before input");
		qkd_reader r = qkd_read(in);
		uint32_t n = qkd_r_u32(&r), nb = (uint32_t)(((uint64_t)n + 7) / 8);
		const uint8_t *bits = qkd_r_raw(&r, nb), *bases = qkd_r_raw(&r, nb), *ints = NULL;
		if (st.role == QKD_ALICE)
			ints = qkd_r_raw(&r, n);
		if (qkd_r_done(&r))
			return qkd_failf("step: bad input: sift input: %s", qkd_r_error(&r, eb));
		if (ints) {
			uint32_t i = bad_intensity(ints, n);
			if (i < n)
				return qkd_failf("step: bad input: intensity %u ≥ K=%u", (uint32_t)ints[i], st.k);
		}
		st.n = n, st.nb = nb, st.bits = bits, st.bases = bases, st.ints = ints;
		st.state = 1;
		if (st.role == QKD_BOB) {
			qkd_w_reserve(&res->msg, 4 + nb);
			qkd_w_vec_bytes(&res->msg, bases, n);
			st.rounds++;
			res->has_msg = 1;
		}
		res->rounds = st.rounds;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer) {
		st.rounds++;
		qkd_reader r = qkd_read(peer);
		uint32_t pn = qkd_r_u32(&r);
		const uint8_t *pb = qkd_r_raw(&r, (uint32_t)(((uint64_t)pn + 7) / 8));
		if (st.role == QKD_ALICE) {
			if (qkd_r_done(&r) || pn != st.n)
				return qkd_failf("step: protocol violation: sift: Bob's bases: want %u, %s", st.n,
				                 qkd_r_error(&r, eb));
			qkd_w_reserve(&res->msg, 8 + st.nb + st.n);
			qkd_w_vec_bytes(&res->msg, st.bases, st.n);
			qkd_w_bytes(&res->msg, st.ints, st.n);
			st.rounds++;
			st.state = 2;
			int e = split(pb, st.ints, res);
			if (e != QKD_OK)
				return e;
			res->has_msg = 1, res->done = 1, res->rounds = st.rounds;
			return QKD_OK;
		}
		uint32_t il = qkd_r_u32(&r);
		const uint8_t *ints = qkd_r_raw(&r, il);
		if (qkd_r_done(&r) || pn != st.n || il != st.n)
			return qkd_failf("step: protocol violation: sift: Alice's answer: want %u, %s", st.n,
			                 qkd_r_error(&r, eb));
		uint32_t i = bad_intensity(ints, st.n);
		if (i < st.n)
			return qkd_failf("step: protocol violation: sift: intensity %u ≥ K=%u", (uint32_t)ints[i], st.k);
		st.state = 2;
		int e = split(pb, ints, res);
		if (e != QKD_OK)
			return e;
		res->done = 1, res->rounds = st.rounds;
		return QKD_OK;
	}
	return qkd_failf("step: protocol violation: sift: unexpected call in state %u", (uint32_t)st.state);
}
