/*
 * verify.c — the verify step (a Toeplitz hash of the reconciled key) as a
 * freestanding C plugin (plugins/ABI.md): bit for bit the Go step
 * plugins/steps/verify (same output, messages, metrics, and errors worded as
 * Go words them). The protocol (verify.go's package comment):
 *
 *   params: u8 t (1..64). Input: the reconciled key, a wire vec of n bits.
 *   Alice takes n+t−1 seed bits — the host's seed when it holds
 *   ceil((n+t−1)/8) bytes, else its ChaCha8 expansion (bits.SeedBytes,
 *   label "qkdkms/verify") — and sends "seed bytes, u64 tag" at once; Bob
 *   answers with u8 verdict (1 = his tag equals hers) and is done; Alice is
 *   done on the verdict. Output (both): u8 verdict. Leaked: t each.
 *
 * Tag bit i = ⊕_j s[i+j]·key[j]: the XOR of the 64-bit seed windows at the
 * key's set bits, masked to t bits (verify.Tag).
 */
#include "qkd_guest.h"

static struct {
	int role;
	uint32_t t;
	qkd_bytes seed; /* read in place: the host's buffers are never freed by this plugin */
	const uint8_t *key;
	uint32_t n;
	int state; /* 0 fresh, 1 key read, 2 done */
	uint32_t rounds;
	uint64_t leaked;
} st;

static int plugin_new(int role, qkd_bytes params, qkd_bytes seed) {
	qkd_reader r = qkd_read(params);
	uint32_t t = qkd_r_u8(&r);
	if (qkd_r_done(&r) || t < 1 || t > 64)
		return qkd_fail("step: bad parameters: verify params: want u8 t in 1..64");
	st.role = role, st.t = t, st.seed = seed;
	return QKD_OK;
}

/* seed_len: n+t−1 seed bits as ceil((n+t−1)/8) bytes. */
static uint32_t seed_len(void) { return (uint32_t)(((uint64_t)st.n + st.t - 1 + 7) / 8); }

/* tag: verify.Tag of the key under the seed bytes sb (seed_len() bytes), or
 * -1 out of memory (*out unset). Every window bit it keeps lies below n+t−1,
 * so bits of sb beyond it never count (Go clears them). */
static int tag(const uint8_t *sb, uint64_t *out) {
	uint32_t sn = seed_len(), sw_n = (sn + 7) / 8 + 1;
	uint64_t *s = qkd_malloc((size_t)sw_n * 8); /* one zero word after the seed */
	if (!s)
		return -1;
	__builtin_memcpy(s, sb, sn);
	uint32_t nb = (uint32_t)(((uint64_t)st.n + 7) / 8), nw = (uint32_t)(((uint64_t)st.n + 63) / 64);
	uint64_t acc = 0;
	for (uint32_t w = 0; w < nw; w++) {
		uint64_t k = qkd_word_at(st.key, nb, w);
		if (st.n - 64 * w < 64)
			k &= (1ull << (st.n - 64 * w)) - 1; /* the key's bits beyond n are zero in Go */
		uint64_t s0 = s[w], s1 = s[w + 1] << 1;
		for (; k; k &= k - 1) {
			int b = __builtin_ctzll(k);
			acc ^= s0 >> b | s1 << (63 - b); /* bits [64w+b, 64w+b+64) of the seed */
		}
	}
	qkd_free(s, (size_t)sw_n * 8);
	if (st.t < 64)
		acc &= (1ull << st.t) - 1;
	*out = acc;
	return 0;
}

static int plugin_step(qkd_bytes in, qkd_bytes peer, int has_peer, qkd_result *res) {
	char eb[80];
	if (st.state == 0 && !has_peer) {
		qkd_reader r = qkd_read(in);
		uint32_t n = qkd_r_u32(&r);
		const uint8_t *key = qkd_r_raw(&r, (uint32_t)(((uint64_t)n + 7) / 8));
		if (qkd_r_done(&r))
			return qkd_failf("step: bad input: verify input: %s", qkd_r_error(&r, eb));
		st.key = key, st.n = n;
		st.state = 1;
		if (st.role == QKD_BOB) {
			res->rounds = st.rounds;
			return QKD_OK;
		}
		uint32_t sn = seed_len();
		const uint8_t *sb = qkd_seed_bytes(st.seed, "qkdkms/verify", sn);
		uint64_t h;
		if (!sb || tag(sb, &h))
			return qkd_fail("out of memory");
		qkd_w_reserve(&res->msg, sn + 8);
		qkd_w_raw(&res->msg, sb, sn);
		qkd_w_u64(&res->msg, h);
		st.rounds++;
		st.leaked += st.t;
		res->has_msg = 1, res->rounds = st.rounds, res->leaked = st.leaked;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer && st.role == QKD_BOB) {
		st.rounds++;
		st.leaked += st.t;
		qkd_reader r = qkd_read(peer);
		const uint8_t *sb = qkd_r_raw(&r, seed_len());
		uint64_t want = qkd_r_u64(&r);
		if (qkd_r_done(&r))
			return qkd_failf("step: protocol violation: verify: Alice's message: %s", qkd_r_error(&r, eb));
		uint64_t h;
		if (tag(sb, &h))
			return qkd_fail("out of memory");
		uint8_t verdict = h == want;
		st.rounds++;
		st.state = 2;
		qkd_w_u8(&res->out, verdict);
		qkd_w_u8(&res->msg, verdict);
		res->has_msg = 1, res->done = 1, res->rounds = st.rounds, res->leaked = st.leaked;
		return QKD_OK;
	}
	if (st.state == 1 && has_peer && st.role == QKD_ALICE) {
		st.rounds++;
		if (peer.n != 1 || peer.p[0] > 1)
			return qkd_fail("step: protocol violation: verify: Bob's verdict");
		st.state = 2;
		qkd_w_u8(&res->out, peer.p[0]);
		res->done = 1, res->rounds = st.rounds, res->leaked = st.leaked;
		return QKD_OK;
	}
	return qkd_failf("step: protocol violation: verify: unexpected call in state %u", (uint32_t)st.state);
}
