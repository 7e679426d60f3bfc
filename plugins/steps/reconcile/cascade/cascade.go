// Package cascade is interactive error reconciliation with Cascade, in the
// modified form studied by Martinez-Mateo, Pacher, Peev, Ciurana and Martin,
// "Demystifying the information reconciliation protocol Cascade",
// QIC 15, 453 (2015), arXiv:1407.3257:
//
//   - option 8 (default, plugin "cascade"): 14 passes, block sizes
//     k1 = 2^⌈α⌉, k2 = 2^⌈(α+12)/2⌉, k3 = 4096, k≥4 = n/2 with
//     α = log2(1/q) − 0.5;
//   - Yan et al. (plugin "cascade-yanetal"): 10 passes, k1 = ⌈0.8/q⌉,
//     k2 = 5·k1, k≥3 = n/2.
//
// Both use sub-block reuse (every block or sub-block whose parity Alice has
// revealed, or that follows from revealed ones, is re-checked after each
// correction) and never ask for a parity that is known or inferable (the
// right half of a binary-search node from its parent and left half; the last
// top-level block of passes ≥ 2 from the total parity). Passes start one
// after the other, as in sequential Cascade, but within the passes started
// every binary search that is waiting for a parity asks in the same round:
// a round carries the next query of every pending search, of every pass.
// At n = 10^5 this takes 2.5× fewer rounds than serving the lowest pass
// first (1,054 instead of 2,679 at QBER 2 %) with the same leakage (f 1.036
// instead of 1.037); starting the next pass before the searches of the
// started ones finished would halve the rounds again but double f.
//
// Messages. Alice → Bob first: a 32-byte permutation seed and the top-level
// block parities of every pass (Alice's key never changes, so revealing them
// up front leaks exactly what sequential Cascade leaks). Then Bob asks for the
// parities of the sub-blocks his binary searches need, in batches: a round is
// one batch of queries (Bob → Alice) and its answers (Alice → Bob); a query
// batch with no queries ends the protocol. Leaked = parities Alice revealed.
//
// Input: the key (wire vec). Params: f64 q, the QBER estimate (clamped to
// [0.001, 0.3]). Output: the key (Alice: unchanged, Bob: corrected).
package cascade

import (
	"fmt"
	"math"
	mbits "math/bits"

	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/wire"
)

// Version 1.1.0: every binary search that can proceed queries in the same
// round (1.0.0 served the lowest pass first): 2.5× fewer rounds, f unchanged.
const Version = "1.1.0"

// Variant is a block-size schedule and number of passes.
type Variant struct {
	Name   string
	Passes int
	// Block returns the block size of pass i (0-based) for QBER q and n bits.
	Block func(q float64, n, i int) int
}

// Option8 is "Cascade opt. (8)" of Martinez-Mateo et al.
var Option8 = Variant{Name: "cascade", Passes: 14, Block: func(q float64, n, i int) int {
	a := math.Log2(1/q) - 0.5
	switch i {
	case 0:
		return 1 << int(math.Ceil(a))
	case 1:
		return 1 << int(math.Ceil((a+12)/2))
	case 2:
		return 4096
	}
	return n / 2
}}

// Yanetal is "Cascade opt. (2)" of Martinez-Mateo et al. (Yan et al. 2008).
var Yanetal = Variant{Name: "cascade-yanetal", Passes: 10, Block: func(q float64, n, i int) int {
	k1 := int(math.Ceil(0.8 / q))
	switch i {
	case 0:
		return k1
	case 1:
		return 5 * k1
	}
	return n / 2
}}

// New creates an option-8 Cascade instance.
func New(role steps.Role, params, seed []byte) (steps.Step, error) {
	return NewVariant(Option8, role, params, seed)
}

// NewYanetal creates a Yan et al. Cascade instance.
func NewYanetal(role steps.Role, params, seed []byte) (steps.Step, error) {
	return NewVariant(Yanetal, role, params, seed)
}

// Params encodes the parameters for a QBER estimate.
func Params(q float64) []byte {
	w := wire.Writer{}
	w.F64(q)
	return w.B
}

// NewVariant creates an instance of the given variant.
func NewVariant(v Variant, role steps.Role, params, seed []byte) (steps.Step, error) {
	r := wire.Reader{B: params}
	q := r.F64()
	if err := r.Done(); err != nil || math.IsNaN(q) || q < 0 || q > 0.5 {
		return nil, fmt.Errorf("%w: cascade params: want f64 QBER in [0, 0.5]", steps.ErrParams)
	}
	q = min(max(q, 0.001), 0.3)
	return &cascade{v: v, q: q, role: role, seed: append([]byte(nil), seed...)}, nil
}

// node state bits
const (
	known   = 1 // Alice's parity of the node is known to Bob
	diff    = 2 // Alice's parity ≠ Bob's parity (valid when known)
	queried = 4 // a query for this node is outstanding
)

type pass struct {
	k, nb int
	ts    int      // tree slots per block: 2·nextpow2(k)
	perm  []uint32 // permuted position → key position (nil: identity or halves)
	sel   bits.Vec // halves: the first block's positions
	rank  []uint32 // halves: selected bits before each word
	inv   []uint32 // key position → permuted position (Bob; nil: identity)
	bv    bits.Vec // key in permuted order
	st    []uint8  // node states, block b's heap index h at b·ts+h (Bob, lazily)
	root  []uint8  // root states until st is allocated
	pend  []cand   // candidates (Bob)
}

type cand struct{ b, h, lo, hi uint32 }

type query struct {
	p      uint8
	b, h   uint32
	lo, hi uint32
}

type cascade struct {
	v     Variant
	q     float64
	role  steps.Role
	seed  []byte
	n     int
	key   bits.Vec
	ps    []pass
	state int
	built bool // Bob: the first message arrived
	m     steps.Metrics

	cur     int
	waiting []cand // Bob: candidates waiting for answers, with their pass
	wpass   []uint8
	queries []query
}

func (c *cascade) blockSizes() {
	c.ps = make([]pass, c.v.Passes)
	for i := range c.ps {
		k := c.v.Block(c.q, c.n, i)
		k = min(max(k, 1), max(c.n, 1))
		p := &c.ps[i]
		p.k = k
		p.nb = (c.n + k - 1) / k
		p.ts = 2 << uint(mbits.Len(uint(k-1)))
	}
}

func (c *cascade) build(permSeed []byte) {
	for i := range c.ps {
		p := &c.ps[i]
		switch {
		case i == 0:
			p.bv = c.key
		case 2*p.k >= c.n && c.n > 1:
			c.halves(p, bits.NewRNG(permSeed, fmt.Sprintf("qkdkms/cascade/pass/%d", i)))
		default:
			p.perm = bits.NewRNG(permSeed, fmt.Sprintf("qkdkms/cascade/pass/%d", i)).Perm(c.n)
		}
		if p.perm != nil {
			p.bv = bits.New(c.n)
			kw := c.key.W
			bw := p.bv.W
			for t, src := range p.perm {
				bw[t>>6] |= (kw[src>>6] >> (src & 63) & 1) << (uint(t) & 63)
			}
			if c.role == steps.Bob {
				p.inv = make([]uint32, c.n)
				for t, src := range p.perm {
					p.inv[src] = uint32(t)
				}
			}
		}
		if c.role == steps.Bob {
			p.root = make([]uint8, p.nb)
		}
	}
}

// halves sets up a pass whose blocks are two random halves: a random subset
// S (the larger of a random subset and its complement) followed by the rest,
// each in key order. Only the split matters for detecting errors, so this
// costs one random bit per position instead of a full permutation, and the
// position maps are rank/select on the subset's bitmap; the block size
// becomes |S| (n/2 ± O(√n)).
func (c *cascade) halves(p *pass, r *bits.RNG) {
	n := c.n
	sel := bits.New(n)
	for i := range sel.W {
		sel.W[i] = r.Uint64()
	}
	tail := uint64(1)<<uint(n%64) - 1
	if n%64 == 0 {
		tail = ^uint64(0)
	}
	sel.W[len(sel.W)-1] &= tail
	if ones := sel.Ones(); 2*ones < n {
		for i := range sel.W {
			sel.W[i] = ^sel.W[i]
		}
		sel.W[len(sel.W)-1] &= tail
	}
	p.sel = sel
	p.rank = make([]uint32, len(sel.W)+1)
	for i, w := range sel.W {
		p.rank[i+1] = p.rank[i] + uint32(mbits.OnesCount64(w))
	}
	p.k = int(p.rank[len(sel.W)])
	p.nb = (n + p.k - 1) / p.k
	p.ts = 2 << uint(mbits.Len(uint(p.k-1)))
}

// ensureBV builds the key in the pass's order for a halves pass on first use
// (its top-level parities need only the subset bitmap).
func (p *pass) ensureBV(key bits.Vec) {
	if p.rank == nil || p.bv.W != nil {
		return
	}
	n := key.N
	tail := uint64(1)<<uint(n%64) - 1
	if n%64 == 0 {
		tail = ^uint64(0)
	}
	sel := p.sel
	p.bv = bits.New(n)
	// Two bit streams into bv: the selected bits from position 0, the
	// others from position k. Sixteen bits per loop iteration, no branches
	// on the data: in WASM every loop back-edge costs a termination check.
	bw := p.bv.W
	s0 := bitStream{w: bw}
	s1 := bitStream{w: bw, i: p.k >> 6, n: uint(p.k) & 63}
	for w, m := range sel.W {
		kw := key.W[w]
		um := ^m
		if w == len(sel.W)-1 {
			um &= tail
		}
		for b := uint(0); b < 64; b += 16 {
			x, ms, mu := kw>>b, m>>b, um>>b
			s0.put(x, ms)
			s1.put(x, mu)
			s0.put(x>>1, ms>>1)
			s1.put(x>>1, mu>>1)
			s0.put(x>>2, ms>>2)
			s1.put(x>>2, mu>>2)
			s0.put(x>>3, ms>>3)
			s1.put(x>>3, mu>>3)
			s0.put(x>>4, ms>>4)
			s1.put(x>>4, mu>>4)
			s0.put(x>>5, ms>>5)
			s1.put(x>>5, mu>>5)
			s0.put(x>>6, ms>>6)
			s1.put(x>>6, mu>>6)
			s0.put(x>>7, ms>>7)
			s1.put(x>>7, mu>>7)
			s0.put(x>>8, ms>>8)
			s1.put(x>>8, mu>>8)
			s0.put(x>>9, ms>>9)
			s1.put(x>>9, mu>>9)
			s0.put(x>>10, ms>>10)
			s1.put(x>>10, mu>>10)
			s0.put(x>>11, ms>>11)
			s1.put(x>>11, mu>>11)
			s0.put(x>>12, ms>>12)
			s1.put(x>>12, mu>>12)
			s0.put(x>>13, ms>>13)
			s1.put(x>>13, mu>>13)
			s0.put(x>>14, ms>>14)
			s1.put(x>>14, mu>>14)
			s0.put(x>>15, ms>>15)
			s1.put(x>>15, mu>>15)
		}
	}
	s0.flush()
	s1.flush()
}

// bitStream appends bits to a zeroed word slice (OR-ing, so two streams may
// share a boundary word).
type bitStream struct {
	w   []uint64
	i   int
	acc uint64
	n   uint
}

// put appends bit 0 of x if bit 0 of take is set.
func (s *bitStream) put(x, take uint64) {
	t := take & 1
	s.acc |= (x & t) << s.n
	s.n += uint(t)
	if s.n == 64 {
		s.w[s.i] |= s.acc
		s.i++
		s.acc, s.n = 0, 0
	}
}

func (s *bitStream) flush() {
	if s.n > 0 {
		s.w[s.i] |= s.acc
	}
}

// blockParity returns the parity of the key's bits in top-level block b.
func (p *pass) blockParity(b int, key bits.Vec) uint8 {
	if p.rank != nil && p.bv.W == nil {
		var x uint64
		for w, m := range p.sel.W {
			x ^= key.W[w] & m
		}
		ps := uint8(mbits.OnesCount64(x) & 1)
		if b == 0 {
			return ps
		}
		return ps ^ key.Parity(0, key.N)
	}
	lo, hi := p.blockRange(b, key.N)
	return p.bv.Parity(lo, hi)
}

// idx maps a key position to its position in the pass's order.
func (p *pass) idx(x int) int {
	switch {
	case p.inv != nil:
		return int(p.inv[x])
	case p.rank != nil:
		w := x >> 6
		m := p.sel.W[w]
		below := uint64(1)<<(uint(x)&63) - 1
		r := int(p.rank[w]) + mbits.OnesCount64(m&below)
		if m>>(uint(x)&63)&1 == 1 {
			return r
		}
		return p.k + x - r
	}
	return x
}

// pos maps a position in the pass's order to the key position.
func (p *pass) pos(t int) int {
	switch {
	case p.perm != nil:
		return int(p.perm[t])
	case p.rank != nil:
		sel := t < p.k
		if !sel {
			t -= p.k
		}
		// first word w with count(w+1) > t, count = selected or unselected prefix
		cnt := func(w int) int {
			if sel {
				return int(p.rank[w])
			}
			return 64*w - int(p.rank[w])
		}
		lo, hi := 0, len(p.sel.W)
		for lo < hi {
			mid := (lo + hi) / 2
			if cnt(mid+1) > t {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		m := p.sel.W[lo]
		if !sel {
			m = ^m
		}
		for r := t - cnt(lo); r > 0; r-- {
			m &= m - 1
		}
		return lo*64 + mbits.TrailingZeros64(m)
	}
	return t
}

// tree returns the node states of pass p, allocating them (and moving the
// root states in) on first use.
func (p *pass) tree() []uint8 {
	if p.st == nil {
		p.st = make([]uint8, p.nb*p.ts)
		for b, s := range p.root {
			p.st[b*p.ts+1] = s
		}
		p.root = nil
	}
	return p.st
}

func (p *pass) blockRange(b, n int) (int, int) {
	lo := b * p.k
	return lo, min(lo+p.k, n)
}

// nodeRange returns the range of node h of block b, or ok=false if h does
// not name a node of that block.
func (p *pass) nodeRange(b, h, n int) (lo, hi int, ok bool) {
	if b < 0 || b >= p.nb || h < 1 || h >= p.ts {
		return 0, 0, false
	}
	lo, hi = p.blockRange(b, n)
	for i := mbits.Len(uint(h)) - 2; i >= 0; i-- {
		if hi-lo < 2 {
			return 0, 0, false
		}
		mid := (lo + hi) / 2
		if (h>>uint(i))&1 == 0 {
			hi = mid
		} else {
			lo = mid
		}
	}
	return lo, hi, true
}

func (c *cascade) Step(in steps.Input) (steps.Result, error) {
	switch {
	case c.state == 0 && !in.HasPeer:
		r := wire.Reader{B: in.Data}
		c.key = r.Vec()
		if err := r.Done(); err != nil {
			return steps.Result{}, fmt.Errorf("%w: cascade input: %w", steps.ErrInput, err)
		}
		c.key = c.key.Clone()
		c.n = c.key.N
		c.blockSizes()
		c.state = 1
		if c.role == steps.Bob {
			return steps.Result{Metrics: c.m}, nil
		}
		return c.aliceFirst()
	case c.state == 1 && in.HasPeer:
		c.m.Rounds++
		if c.role == steps.Alice {
			return c.aliceAnswer(in.Peer)
		}
		if !c.built {
			if err := c.bobFirst(in.Peer); err != nil {
				return steps.Result{}, err
			}
		} else if err := c.bobAnswers(in.Peer); err != nil {
			return steps.Result{}, err
		}
		return c.bobRun()
	}
	return steps.Result{}, fmt.Errorf("%w: cascade: unexpected call in state %d", steps.ErrProtocol, c.state)
}

func (c *cascade) aliceFirst() (steps.Result, error) {
	permSeed := bits.SeedBytes(c.seed, "qkdkms/cascade/perm", 32)
	c.build(permSeed)
	par := bits.New(c.topCount())
	idx := 0
	for i := range c.ps {
		p := &c.ps[i]
		nb := p.nb
		if i > 0 && nb > 0 {
			nb-- // the last block's parity follows from the total parity
		}
		for b := 0; b < nb; b++ {
			par.Set(idx, p.blockParity(b, c.key))
			idx++
		}
	}
	w := wire.Writer{}
	w.B = append(w.B, permSeed...)
	w.Vec(par)
	c.m.Leaked += uint64(par.N)
	c.m.Rounds++
	return steps.Result{Msg: w.B, HasMsg: true, Metrics: c.m}, nil
}

func (c *cascade) topCount() int {
	t := 0
	for i := range c.ps {
		t += c.ps[i].nb
		if i > 0 && c.ps[i].nb > 0 {
			t--
		}
	}
	return t
}

func (c *cascade) aliceAnswer(msg []byte) (steps.Result, error) {
	r := wire.Reader{B: msg}
	cnt := int(r.U32())
	if r.Err() != nil || cnt > len(msg)/9 {
		return steps.Result{}, fmt.Errorf("%w: cascade: query batch", steps.ErrProtocol)
	}
	if cnt == 0 {
		if err := r.Done(); err != nil {
			return steps.Result{}, fmt.Errorf("%w: cascade: final message: %w", steps.ErrProtocol, err)
		}
		c.state = 2
		w := wire.Writer{}
		w.Vec(c.key)
		return steps.Result{Output: w.B, Done: true, Metrics: c.m}, nil
	}
	ans := bits.New(cnt)
	for i := 0; i < cnt; i++ {
		pi, b, h := int(r.U8()), int(r.U32()), int(r.U32())
		if r.Err() != nil || pi >= len(c.ps) {
			return steps.Result{}, fmt.Errorf("%w: cascade: query %d: pass %d", steps.ErrProtocol, i, pi)
		}
		p := &c.ps[pi]
		lo, hi, ok := p.nodeRange(b, h, c.n)
		if !ok {
			return steps.Result{}, fmt.Errorf("%w: cascade: query %d names no block", steps.ErrProtocol, i)
		}
		p.ensureBV(c.key)
		ans.Set(i, p.bv.Parity(lo, hi))
	}
	if err := r.Done(); err != nil {
		return steps.Result{}, fmt.Errorf("%w: cascade: query batch: %w", steps.ErrProtocol, err)
	}
	c.m.Leaked += uint64(cnt)
	c.m.Rounds++
	w := wire.Writer{}
	w.Vec(ans)
	return steps.Result{Msg: w.B, HasMsg: true, Metrics: c.m}, nil
}

func (c *cascade) bobFirst(msg []byte) error {
	r := wire.Reader{B: msg}
	permSeed := r.Raw(32)
	par := r.Vec()
	if err := r.Done(); err != nil {
		return fmt.Errorf("%w: cascade: first message: %w", steps.ErrProtocol, err)
	}
	c.build(permSeed)
	c.built = true
	if par.N != c.topCount() {
		return fmt.Errorf("%w: cascade: first message has %d parities, want %d", steps.ErrProtocol, par.N, c.topCount())
	}
	c.m.Leaked += uint64(par.N)
	var total uint8
	idx := 0
	for i := range c.ps {
		p := &c.ps[i]
		var acc uint8
		for b := 0; b < p.nb; b++ {
			var a uint8
			if i > 0 && b == p.nb-1 {
				a = total ^ acc
			} else {
				a = par.Get(idx)
				idx++
			}
			acc ^= a
			s := uint8(known)
			if a != p.blockParity(b, c.key) {
				s |= diff
			}
			p.root[b] = s
		}
		if i == 0 {
			total = acc
		}
	}
	c.cur = -1
	return nil
}

func (c *cascade) bobAnswers(msg []byte) error {
	r := wire.Reader{B: msg}
	ans := r.Vec()
	if err := r.Done(); err != nil || ans.N != len(c.queries) {
		return fmt.Errorf("%w: cascade: answers (want %d): %v", steps.ErrProtocol, len(c.queries), err)
	}
	c.m.Leaked += uint64(ans.N)
	for i, q := range c.queries {
		p := &c.ps[q.p]
		p.ensureBV(c.key)
		s := uint8(known)
		if ans.Get(i) != p.bv.Parity(int(q.lo), int(q.hi)) {
			s |= diff
		}
		p.tree()[int(q.b)*p.ts+int(q.h)] = s
	}
	c.queries = c.queries[:0]
	for i, w := range c.waiting {
		p := &c.ps[c.wpass[i]]
		p.pend = append(p.pend, w)
	}
	c.waiting = c.waiting[:0]
	c.wpass = c.wpass[:0]
	return nil
}

// bobRun makes all progress possible without new parities and returns the
// next query batch (every pending search of every started pass), or the
// final message.
func (c *cascade) bobRun() (steps.Result, error) {
	for {
		// With Alice's true parities every correction fixes an error, so
		// there are at most n; inconsistent parities (a faulty or hostile
		// peer) could otherwise keep the searches correcting for ever.
		if c.m.Corrected > uint64(c.n) {
			return steps.Result{}, fmt.Errorf("%w: cascade: more corrections than key bits: the peer's parities are inconsistent", steps.ErrProtocol)
		}
		j := -1
		for i := 0; i <= c.cur && i < len(c.ps); i++ {
			if len(c.ps[i].pend) > 0 {
				j = i
				break
			}
		}
		if j < 0 {
			if len(c.queries) > 0 {
				break
			}
			if c.cur+1 >= len(c.ps) {
				// done
				w := wire.Writer{}
				w.U32(0)
				c.m.Rounds++
				c.state = 2
				out := wire.Writer{}
				out.Vec(c.key)
				return steps.Result{Output: out.B, Msg: w.B, HasMsg: true, Done: true, Metrics: c.m}, nil
			}
			c.cur++
			p := &c.ps[c.cur]
			for b := 0; b < p.nb; b++ {
				if p.rootState(b)&diff != 0 {
					lo, hi := p.blockRange(b, c.n)
					p.pend = append(p.pend, cand{uint32(b), 1, uint32(lo), uint32(hi)})
				}
			}
			continue
		}
		p := &c.ps[j]
		list := p.pend
		p.pend = nil
		for _, cd := range list {
			c.descend(j, cd)
		}
	}
	w := wire.Writer{B: make([]byte, 0, 4+9*len(c.queries))}
	w.U32(uint32(len(c.queries)))
	for _, q := range c.queries {
		w.U8(q.p)
		w.U32(q.b)
		w.U32(q.h)
	}
	c.m.Rounds++
	return steps.Result{Msg: w.B, HasMsg: true, Metrics: c.m}, nil
}

// descend runs the binary search of candidate cd of pass j as far as known
// parities allow: it corrects an error, drops the candidate (even parity) or
// parks it waiting for a query (returns true).
func (c *cascade) descend(j int, cd cand) bool {
	p := &c.ps[j]
	base := int(cd.b) * p.ts
	st := p.tree()
	h := int(cd.h)
	if st[base+h]&(known|diff) != known|diff {
		return false
	}
	lo, hi := int(cd.lo), int(cd.hi)
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		l, r := 2*h, 2*h+1
		sl, sr := st[base+l], st[base+r]
		if sl&known == 0 {
			if sr&known == 0 {
				if sl&queried == 0 {
					st[base+l] = sl | queried
					c.queries = append(c.queries, query{uint8(j), cd.b, uint32(l), uint32(lo), uint32(mid)})
				}
				c.waiting = append(c.waiting, cand{cd.b, uint32(h), uint32(lo), uint32(hi)})
				c.wpass = append(c.wpass, uint8(j))
				return true
			}
			// infer left from parent (odd) and right
			sl = known | (diff ^ sr&diff)
			st[base+l] = sl
		}
		if sl&diff != 0 {
			h, hi = l, mid
			continue
		}
		if sr&known == 0 {
			st[base+r] = known | diff
		}
		h, lo = r, mid
	}
	c.flip(p.pos(lo))
	return false
}

// flip corrects Bob's bit at key position x and updates every pass.
func (c *cascade) flip(x int) {
	c.key.Flip(x)
	c.m.Corrected++
	for j := range c.ps {
		p := &c.ps[j]
		t := p.idx(x)
		if j > 0 && p.bv.W != nil {
			p.bv.Flip(t)
		}
		b := t / p.k
		if p.st == nil {
			p.root[b] ^= diff
			if p.root[b]&diff != 0 && j <= c.cur {
				lo, hi := p.blockRange(b, c.n)
				p.pend = append(p.pend, cand{uint32(b), 1, uint32(lo), uint32(hi)})
			}
			continue
		}
		base := b * p.ts
		lo, hi := p.blockRange(b, c.n)
		h := 1
		for {
			s := p.st[base+h]
			if s&known != 0 {
				s ^= diff
				p.st[base+h] = s
				if s&diff != 0 && j <= c.cur {
					p.pend = append(p.pend, cand{uint32(b), uint32(h), uint32(lo), uint32(hi)})
				}
			}
			if hi-lo <= 1 {
				break
			}
			mid := (lo + hi) / 2
			if t < mid {
				h, hi = 2*h, mid
			} else {
				h, lo = 2*h+1, mid
			}
		}
	}
}

func (p *pass) rootState(b int) uint8 {
	if p.st == nil {
		return p.root[b]
	}
	return p.st[b*p.ts+1]
}
