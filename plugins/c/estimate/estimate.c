/*
 * estimate.c — parameter estimation as a freestanding C plugin
 * (plugins/ABI.md): bit for bit the Go step plugins/steps/estimate (same
 * output, messages, metrics, and errors worded as Go words them). The
 * protocol (estimate.go's package comment):
 *
 *   params: empty. Input: sift's output (u8 K, vec Z bits, bytes Z
 *   intensities, vec X bits, bytes X intensities, every intensity < K).
 *   Alice sends her X bits (vec) at once; Bob answers with his on hers and
 *   is done; Alice is done on his. Disclosed: n_X for each vec sent or
 *   received. Output: u8 K, K × (u64 n_Z,k, u64 n_X,k, u64 m_X,k), vec Z.
 *
 * The input and the message are read in place (the host's buffers are never
 * freed by this plugin); n_Z,k and n_X,k are counted with SIMD128 when K ≤
 * 16, the errors m_X,k from the set bits of the XOR of the two X vectors.
 */
#include <wasm_simd128.h>

#include "qkd_guest.h"

static struct {
	int role;
	int state; /* 0 fresh, 1 input read, 2 done */
	uint32_t rounds;
	uint64_t disclosed;
	uint32_t k, nz, nx;
	const uint8_t *z, *zint, *x, *xint;
} st;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	if (params.n != 0)
		return qkd_fail("step: bad parameters: estimate takes no params");
	st.role = role;
	return QKD_OK;
}

/* first_bad: the index of the first intensity ≥ k in b[0..n), or n. */
static uint32_t first_bad(const uint8_t *b, uint32_t n, uint32_t k) {
	if (k > 255)
		return n;
	uint8_t kk = (uint8_t)k, any = 0;
	for (uint32_t i = 0; i < n; i++) /* vectorized: no early exit */
		any |= b[i] >= kk;
	if (!any)
		return n;
	uint32_t i = 0;
	while (b[i] < kk)
		i++;
	return i;
}

/* hist adds the number of times each value occurs in b[0..n) to h (every
 * value < k). For k ≤ 16, SIMD128: per value, 16 bytes compared at a time
 * and the matches summed in byte lanes, 255 vectors at most per sum. */
static void hist(const uint8_t *b, uint32_t n, uint32_t k, uint64_t h[256]) {
	uint32_t i = 0;
	if (k <= 16) {
		while (n - i >= 16) {
			uint32_t nv = (n - i) / 16 < 255 ? (n - i) / 16 : 255;
			for (uint32_t v = 0; v < k; v++) {
				v128_t acc = wasm_i8x16_splat(0), x = wasm_i8x16_splat((int8_t)v);
				for (uint32_t j = 0; j < nv; j++) /* a match is −1: subtracted, it counts 1 */
					acc = wasm_i8x16_sub(acc, wasm_i8x16_eq(wasm_v128_load(b + i + 16 * j), x));
				v128_t s = wasm_u32x4_extadd_pairwise_u16x8(wasm_u16x8_extadd_pairwise_u8x16(acc));
				h[v] += (uint64_t)wasm_u32x4_extract_lane(s, 0) + wasm_u32x4_extract_lane(s, 1) +
				        wasm_u32x4_extract_lane(s, 2) + wasm_u32x4_extract_lane(s, 3);
			}
			i += 16 * nv;
		}
		for (; i < n; i++)
			h[b[i]]++;
		return;
	}
	static uint32_t c[4][256]; /* four tables: no chains of increments of one counter */
	__builtin_memset(c, 0, sizeof c);
	for (; i + 4 <= n; i += 4)
		c[0][b[i]]++, c[1][b[i + 1]]++, c[2][b[i + 2]]++, c[3][b[i + 3]]++;
	for (; i < n; i++)
		c[0][b[i]]++;
	for (int v = 0; v < 256; v++)
		h[v] += (uint64_t)c[0][v] + c[1][v] + c[2][v] + c[3][v];
}

/* send: the X bits to the peer. */
static void send(qkd_result *res) {
	qkd_w_reserve(&res->msg, 4 + (st.nx + 7) / 8);
	qkd_w_vec_bytes(&res->msg, st.x, st.nx);
	st.rounds++;
	st.disclosed += st.nx;
	res->has_msg = 1;
}

/* output writes the statistics against the peer's X bits px and the Z key. */
static int output(const uint8_t *px, qkd_result *res) {
	static uint64_t nz[256], nx[256], mx[256];
	__builtin_memset(nz, 0, sizeof nz), __builtin_memset(nx, 0, sizeof nx), __builtin_memset(mx, 0, sizeof mx);
	hist(st.zint, st.nz, st.k, nz);
	hist(st.xint, st.nx, st.k, nx);
	uint32_t n = st.nx, nb = (n + 7) / 8, nw = (n + 63) / 64;
	for (uint32_t w = 0; w < nw; w++) {
		uint64_t d = qkd_word_at(st.x, nb, w) ^ qkd_word_at(px, nb, w);
		if (n - 64 * w < 64)
			d &= (1ull << (n - 64 * w)) - 1;
		const uint8_t *xi = st.xint + 64 * w;
		for (; d; d &= d - 1)
			mx[xi[__builtin_ctzll(d)]]++;
	}
	qkd_writer *o = &res->out;
	qkd_w_reserve(o, 1 + 24 * st.k + 4 + (st.nz + 7) / 8);
	qkd_w_u8(o, (uint8_t)st.k);
	for (uint32_t v = 0; v < st.k; v++) {
		qkd_w_u64(o, nz[v]);
		qkd_w_u64(o, nx[v]);
		qkd_w_u64(o, mx[v]);
	}
	qkd_w_vec_bytes(o, st.z, st.nz);
	return QKD_OK;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	char eb[80];
	if (st.state == 0 && !has_peer) {
		qkd_reader r = qkd_read(in);
		uint32_t k = qkd_r_u8(&r);
		uint32_t nz = qkd_r_u32(&r);
		const uint8_t *z = qkd_r_raw(&r, (uint32_t)(((uint64_t)nz + 7) / 8));
		uint32_t lz = qkd_r_u32(&r);
		const uint8_t *zint = qkd_r_raw(&r, lz);
		uint32_t nx = qkd_r_u32(&r);
		const uint8_t *x = qkd_r_raw(&r, (uint32_t)(((uint64_t)nx + 7) / 8));
		uint32_t lx = qkd_r_u32(&r);
		const uint8_t *xint = qkd_r_raw(&r, lx);
		if (qkd_r_done(&r))
			return qkd_failf("step: bad input: sifted: %s", qkd_r_error(&r, eb));
		if (lz != nz || lx != nx)
			return qkd_fail("step: bad input: sifted: intensity list lengths");
		uint32_t i = first_bad(zint, nz, k);
		if (i < nz)
			return qkd_failf("step: bad input: sifted: intensity %u ≥ K=%u", (uint32_t)zint[i], k);
		i = first_bad(xint, nx, k);
		if (i < nx)
			return qkd_failf("step: bad input: sifted: intensity %u ≥ K=%u", (uint32_t)xint[i], k);
		st.k = k, st.nz = nz, st.nx = nx, st.z = z, st.zint = zint, st.x = x, st.xint = xint;
		st.state = 1;
		if (st.role == QKD_ALICE)
			send(res);
		res->rounds = st.rounds, res->disclosed = st.disclosed;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer) {
		st.rounds++;
		qkd_reader r = qkd_read(peer);
		uint32_t pn = qkd_r_u32(&r);
		const uint8_t *px = qkd_r_raw(&r, (uint32_t)(((uint64_t)pn + 7) / 8));
		if (qkd_r_done(&r) || pn != st.nx)
			return qkd_failf("step: protocol violation: estimate: peer X bits: want %u, %s", st.nx,
			                 qkd_r_error(&r, eb));
		st.disclosed += pn;
		int e = output(px, res);
		if (e != QKD_OK)
			return e;
		st.state = 2;
		if (st.role == QKD_BOB)
			send(res);
		res->done = 1, res->rounds = st.rounds, res->disclosed = st.disclosed;
		return QKD_OK;
	}
	return qkd_failf("step: protocol violation: estimate: unexpected call in state %u", (uint32_t)st.state);
}
