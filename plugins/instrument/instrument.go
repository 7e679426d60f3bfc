// Package instrument rewrites a WebAssembly module so that it calls the host
// periodically, however it loops or recurses, without a trip out of native
// code on every iteration.
//
// The rewritten module has one more imported function, ImportModule.ImportName
// of type () → i32, and one more mutable i32 global, the countdown. At every
// function entry and every loop header the module runs
//
//	global.get $countdown
//	i32.eqz
//	if
//	  call $yield            ;; the host checks the deadline, yields, returns a refill
//	  global.set $countdown
//	end
//	global.get $countdown
//	i32.const 1
//	i32.sub
//	global.set $countdown
//
// so the host is called once every Budget units of work (a unit being one
// loop iteration or one call) and can stop a runaway module by trapping. The
// countdown starts at Budget. Adding an imported function shifts the indices
// of the module's own functions by one; every reference (call, return_call,
// ref.func, exports, start, element segments) is remapped. The custom "name"
// section, whose function indices would be stale, is dropped; other custom
// sections are kept.
//
// Rewrite accepts WebAssembly 2.0 (multi-value, reference types, bulk
// memory, SIMD, sign extension, saturating conversions) plus tail calls, and
// refuses anything else (threads, exceptions, memory64, GC types) with
// ErrUnsupported or a malformed module with ErrMalformed. It checks structure,
// not types: the runtime validates the result.
// See plugins/ABI.md §1 ("Time") for the contract a guest sees.
package instrument

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// ImportModule and ImportName name the host function the rewritten
	// module calls when its countdown reaches zero. It takes no arguments and
	// returns the next budget (an i32 > 0).
	ImportModule = "qkdkms"
	ImportName   = "yield"
	// Budget is the countdown's start value.
	Budget = 10000
)

var (
	// ErrMalformed: the input is not a well-formed WebAssembly binary.
	ErrMalformed = errors.New("instrument: malformed module")
	// ErrUnsupported: the module uses a feature the rewriter does not handle.
	ErrUnsupported = errors.New("instrument: unsupported module")
)

const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
)

// order is the position of each known section in a module (the data count
// section sits between element and code).
var order = map[byte]int{
	secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5, secGlobal: 6,
	secExport: 7, secStart: 8, secElement: 9, secDataCount: 10, secCode: 11, secData: 12,
}

type section struct {
	id   byte
	body []byte
}

// Rewrite returns the instrumented form of the module wasm. It does not
// modify wasm.
func Rewrite(wasm []byte) ([]byte, error) {
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" {
		return nil, fmt.Errorf("%w: no wasm magic", ErrMalformed)
	}
	if string(wasm[4:8]) != "\x01\x00\x00\x00" {
		return nil, fmt.Errorf("%w: binary version %x", ErrUnsupported, wasm[4:8])
	}
	var secs []section
	r := &reader{b: wasm[8:]}
	last := 0
	for !r.eof() {
		id := r.byte()
		body := r.bytes(int(r.u32()))
		if r.err != nil {
			return nil, r.err
		}
		if err := plausibleCount(id, body); err != nil {
			return nil, err
		}
		if id != secCustom {
			o, ok := order[id]
			if !ok {
				return nil, fmt.Errorf("%w: section id %d", ErrUnsupported, id)
			}
			if o <= last {
				return nil, fmt.Errorf("%w: section %d out of order or repeated", ErrMalformed, id)
			}
			last = o
		}
		secs = append(secs, section{id, body})
	}
	m := &module{}
	if err := m.scan(secs); err != nil {
		return nil, err
	}
	out := []byte("\x00asm\x01\x00\x00\x00")
	emit := func(id byte, body []byte) {
		out = append(out, id)
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	have := map[byte]bool{}
	for _, s := range secs {
		have[s.id] = true
	}
	// New sections are emitted just before the first section that must
	// follow them.
	pending := []byte{secType, secImport, secGlobal}
	flush := func(before int) error {
		for len(pending) > 0 && order[pending[0]] < before {
			id := pending[0]
			pending = pending[1:]
			if have[id] {
				continue
			}
			b, err := m.rewrite(id, nil)
			if err != nil {
				return err
			}
			emit(id, b)
		}
		return nil
	}
	for _, s := range secs {
		if s.id == secCustom {
			name, _ := (&reader{b: s.body}).name()
			if name == "name" {
				continue
			}
			out = append(out, s.id)
			out = appendU32(out, uint32(len(s.body)))
			out = append(out, s.body...)
			continue
		}
		if err := flush(order[s.id]); err != nil {
			return nil, err
		}
		b, err := m.rewrite(s.id, s.body)
		if err != nil {
			return nil, err
		}
		emit(s.id, b)
	}
	if err := flush(1 << 30); err != nil {
		return nil, err
	}
	return out, nil
}

// plausibleCount refuses a section whose leading vector count exceeds its
// bytes (every entry takes at least one): a decoder that allocates by the
// count, as wazero's does, would otherwise try to allocate gigabytes for a
// module of a hundred bytes.
func plausibleCount(id byte, body []byte) error {
	switch id {
	case secType, secImport, secFunction, secTable, secMemory, secGlobal, secExport, secElement, secCode, secData:
	default:
		return nil
	}
	r := &reader{b: body}
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if uint64(n) > uint64(len(r.b)) {
		return fmt.Errorf("%w: section %d: vector of %d entries in %d bytes", ErrMalformed, id, n, len(r.b))
	}
	return nil
}

// module is what the rewriter learns in a first pass.
type module struct {
	ntypes         uint32 // types defined
	yieldType      uint32 // index of the () → i32 type (maybe new)
	newType        bool
	importedFuncs  uint32
	importedGlobal uint32
	globals        uint32 // defined globals
	funcs          uint32 // defined functions (function section)
	codes          uint32 // bodies (code section)
}

func (m *module) scan(secs []section) error {
	m.yieldType = ^uint32(0)
	for _, s := range secs {
		r := &reader{b: s.body}
		switch s.id {
		case secType:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				if f := r.byte(); f != 0x60 {
					if r.err == nil {
						r.err = fmt.Errorf("%w: type form %#x", ErrUnsupported, f)
					}
					break
				}
				np := r.u32()
				r.bytes(int(np))
				nr := r.u32()
				res := r.bytes(int(nr))
				if r.err == nil && np == 0 && nr == 1 && res[0] == 0x7F && m.yieldType == ^uint32(0) {
					m.yieldType = i
				}
			}
			m.ntypes = n
		case secImport:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				mod, _ := r.name()
				name, _ := r.name()
				if mod == ImportModule && name == ImportName {
					return fmt.Errorf("%w: the module already imports %s.%s", ErrUnsupported, mod, name)
				}
				switch k := r.byte(); k {
				case 0:
					r.u32()
					m.importedFuncs++
				case 1:
					r.byte()
					r.limits()
				case 2:
					r.limits()
				case 3:
					r.byte()
					r.byte()
					m.importedGlobal++
				default:
					if r.err == nil {
						r.err = fmt.Errorf("%w: import kind %d", ErrUnsupported, k)
					}
				}
			}
		case secFunction:
			m.funcs = r.u32()
		case secGlobal:
			m.globals = r.u32()
		case secCode:
			m.codes = r.u32()
		}
		if r.err != nil {
			return r.err
		}
	}
	if m.funcs != m.codes {
		return fmt.Errorf("%w: %d functions but %d bodies", ErrMalformed, m.funcs, m.codes)
	}
	if m.yieldType == ^uint32(0) {
		m.yieldType = m.ntypes
		m.newType = true
	}
	return nil
}

// fn maps an old function index to the new one: the yield import is
// appended to the imports, so the module's own functions move up by one.
func (m *module) fn(i uint32) uint32 {
	if i >= m.importedFuncs {
		return i + 1
	}
	return i
}

func (m *module) yieldFunc() uint32 { return m.importedFuncs }
func (m *module) countdown() uint32 { return m.importedGlobal + m.globals }

// rewrite returns the new body of section id (body nil: the section is new).
func (m *module) rewrite(id byte, body []byte) ([]byte, error) {
	r := &reader{b: body}
	var out []byte
	switch id {
	case secType:
		n := uint32(0)
		if body != nil {
			n = r.u32()
		}
		if !m.newType {
			return body, nil
		}
		out = appendU32(out, n+1)
		out = append(out, r.rest()...)
		out = append(out, 0x60, 0, 1, 0x7F)
	case secImport:
		n := uint32(0)
		if body != nil {
			n = r.u32()
		}
		out = appendU32(out, n+1)
		out = append(out, r.rest()...)
		out = appendName(out, ImportModule)
		out = appendName(out, ImportName)
		out = append(out, 0)
		out = appendU32(out, m.yieldType)
	case secGlobal:
		n := uint32(0)
		if body != nil {
			n = r.u32()
		}
		out = appendU32(out, n+1)
		for i := uint32(0); i < n && r.err == nil; i++ {
			out = append(out, r.byte(), r.byte()) // valtype, mutability
			out = m.expr(r, out)
		}
		out = append(out, 0x7F, 1, 0x41)
		out = appendS64(out, Budget)
		out = append(out, 0x0B)
	case secExport:
		n := r.u32()
		out = appendU32(out, n)
		for i := uint32(0); i < n && r.err == nil; i++ {
			name, raw := r.name()
			_ = name
			out = append(out, raw...)
			k := r.byte()
			idx := r.u32()
			if k == 0 {
				idx = m.fn(idx)
			}
			out = append(out, k)
			out = appendU32(out, idx)
		}
	case secStart:
		out = appendU32(out, m.fn(r.u32()))
	case secElement:
		out = m.elements(r)
	case secCode:
		n := r.u32()
		out = appendU32(out, n)
		for i := uint32(0); i < n && r.err == nil; i++ {
			size := r.u32()
			fb := &reader{b: r.bytes(int(size))}
			if r.err != nil {
				break
			}
			b, err := m.body(fb)
			if err != nil {
				return nil, fmt.Errorf("function %d: %w", m.importedFuncs+i, err)
			}
			out = appendU32(out, uint32(len(b)))
			out = append(out, b...)
		}
	default:
		return body, nil
	}
	if r.err == nil && !r.eof() {
		r.err = fmt.Errorf("%w: %d trailing bytes in section %d", ErrMalformed, len(r.b), id)
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}

func (m *module) elements(r *reader) []byte {
	n := r.u32()
	out := appendU32(nil, n)
	for i := uint32(0); i < n && r.err == nil; i++ {
		flags := r.u32()
		if flags > 7 {
			r.err = fmt.Errorf("%w: element segment flags %d", ErrMalformed, flags)
			break
		}
		out = appendU32(out, flags)
		if flags == 2 || flags == 6 {
			out = appendU32(out, r.u32()) // table index
		}
		if flags&1 == 0 {
			out = m.expr(r, out) // offset
		}
		if flags&3 != 0 {
			out = append(out, r.byte()) // elemkind (0x00) or reftype
		}
		cnt := r.u32()
		out = appendU32(out, cnt)
		for j := uint32(0); j < cnt && r.err == nil; j++ {
			if flags&4 == 0 {
				out = appendU32(out, m.fn(r.u32()))
			} else {
				out = m.expr(r, out)
			}
		}
	}
	return out
}

// expr copies a constant expression up to and including its end, remapping
// ref.func.
func (m *module) expr(r *reader, out []byte) []byte {
	depth := 0
	for r.err == nil {
		op := r.byte()
		var stop bool
		out, stop = m.instr(r, out, op, &depth, false)
		if stop {
			break
		}
	}
	return out
}

// check is the countdown sequence inserted at function entry and after each
// loop header (see the package comment).
func (m *module) check(out []byte) []byte {
	g, y := m.countdown(), m.yieldFunc()
	out = append(out, 0x23)
	out = appendU32(out, g)
	out = append(out, 0x45, 0x04, 0x40, 0x10)
	out = appendU32(out, y)
	out = append(out, 0x24)
	out = appendU32(out, g)
	out = append(out, 0x0B, 0x23)
	out = appendU32(out, g)
	out = append(out, 0x41, 0x01, 0x6B, 0x24)
	out = appendU32(out, g)
	return out
}

func (m *module) body(r *reader) ([]byte, error) {
	start := r.b
	groups := r.u32()
	var total uint64
	for i := uint32(0); i < groups && r.err == nil; i++ {
		total += uint64(r.u32())
		r.byte()
	}
	if total > 50000 && r.err == nil {
		r.err = fmt.Errorf("%w: %d locals", ErrMalformed, total)
	}
	if r.err != nil {
		return nil, r.err
	}
	out := append([]byte(nil), start[:len(start)-len(r.b)]...)
	out = m.check(out)
	depth := 0
	for {
		if r.eof() {
			return nil, fmt.Errorf("%w: function body without end", ErrMalformed)
		}
		op := r.byte()
		var stop bool
		out, stop = m.instr(r, out, op, &depth, true)
		if r.err != nil {
			return nil, r.err
		}
		if stop {
			break
		}
	}
	if !r.eof() {
		return nil, fmt.Errorf("%w: bytes after the function's end", ErrMalformed)
	}
	return out, nil
}

// instr copies one instruction (op already read) with its immediates,
// remapping function indices and, in a body, instrumenting loops. It reports
// whether op was the end of the outermost block.
func (m *module) instr(r *reader, out []byte, op byte, depth *int, inBody bool) ([]byte, bool) {
	out = append(out, op)
	switch {
	case op == 0x02 || op == 0x03 || op == 0x04: // block, loop, if
		out = r.blockType(out)
		*depth++
		if op == 0x03 && inBody {
			out = m.check(out)
		}
	case op == 0x0B: // end
		if *depth == 0 {
			return out, true
		}
		*depth--
	case op == 0x00 || op == 0x01 || op == 0x05 || op == 0x0F || op == 0x1A || op == 0x1B || op == 0xD1:
	case op == 0x0C || op == 0x0D: // br, br_if
		out = appendU32(out, r.u32())
	case op == 0x0E: // br_table
		n := r.u32()
		out = appendU32(out, n)
		for i := uint32(0); i <= n && r.err == nil; i++ {
			out = appendU32(out, r.u32())
		}
	case op == 0x10 || op == 0x12 || op == 0xD2: // call, return_call, ref.func
		out = appendU32(out, m.fn(r.u32()))
	case op == 0x11 || op == 0x13: // call_indirect, return_call_indirect
		out = appendU32(out, r.u32())
		out = appendU32(out, r.u32())
	case op == 0x1C: // select t*
		n := r.u32()
		out = appendU32(out, n)
		out = append(out, r.bytes(int(n))...)
	case op >= 0x20 && op <= 0x26: // locals, globals, table.get/set
		out = appendU32(out, r.u32())
	case op >= 0x28 && op <= 0x3E: // loads and stores
		out = r.memarg(out)
	case op == 0x3F || op == 0x40: // memory.size, memory.grow
		out = appendU32(out, r.u32())
	case op == 0x41:
		out = appendS64(out, r.s64(32))
	case op == 0x42:
		out = appendS64(out, r.s64(64))
	case op == 0x43:
		out = append(out, r.bytes(4)...)
	case op == 0x44:
		out = append(out, r.bytes(8)...)
	case op >= 0x45 && op <= 0xC4: // numeric, sign extension
	case op == 0xD0: // ref.null
		out = append(out, r.byte())
	case op == 0xFC:
		sub := r.u32()
		out = appendU32(out, sub)
		switch {
		case sub <= 7: // saturating truncations
		case sub == 8 || sub == 12 || sub == 14: // memory.init, table.init, table.copy: two indices
			out = appendU32(out, r.u32())
			out = appendU32(out, r.u32())
		case sub == 10: // memory.copy
			out = appendU32(out, r.u32())
			out = appendU32(out, r.u32())
		case sub == 9 || sub == 11 || sub == 13 || (sub >= 15 && sub <= 17):
			out = appendU32(out, r.u32())
		default:
			r.fail(fmt.Errorf("%w: opcode 0xFC %d", ErrUnsupported, sub))
		}
	case op == 0xFD:
		sub := r.u32()
		out = appendU32(out, sub)
		switch {
		case sub <= 11 || sub == 92 || sub == 93: // v128 loads and stores
			out = r.memarg(out)
		case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
			out = append(out, r.bytes(16)...)
		case sub >= 21 && sub <= 34: // extract/replace lane
			out = append(out, r.byte())
		case sub >= 84 && sub <= 91: // load/store lane
			out = r.memarg(out)
			out = append(out, r.byte())
		case sub <= 0x113: // every other SIMD op has no immediate
		default:
			r.fail(fmt.Errorf("%w: opcode 0xFD %d", ErrUnsupported, sub))
		}
	default:
		r.fail(fmt.Errorf("%w: opcode %#x", ErrUnsupported, op))
	}
	return out, false
}

// reader decodes a byte slice; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) eof() bool { return len(r.b) == 0 || r.err != nil }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail(fmt.Errorf("%w: unexpected end", ErrMalformed))
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.fail(fmt.Errorf("%w: length %d past the end", ErrMalformed, n))
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) rest() []byte {
	b := r.b
	r.b = nil
	return b
}

// u32 reads an unsigned LEB128 of at most 5 bytes.
func (r *reader) u32() uint32 {
	var x uint64
	for i := 0; i < 5; i++ {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		x |= uint64(c&0x7F) << (7 * i)
		if c&0x80 == 0 {
			if x > 0xFFFFFFFF {
				r.fail(fmt.Errorf("%w: u32 out of range", ErrMalformed))
				return 0
			}
			return uint32(x)
		}
	}
	r.fail(fmt.Errorf("%w: u32 too long", ErrMalformed))
	return 0
}

// s64 reads a signed LEB128 of an integer of the given width.
func (r *reader) s64(width uint) int64 {
	var x int64
	var shift uint
	maxBytes := int((width + 6) / 7)
	for i := 0; i < maxBytes; i++ {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		x |= int64(c&0x7F) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				x |= -1 << shift
			}
			if width < 64 && (x < -(1<<(width-1)) || x >= 1<<(width-1)) {
				r.fail(fmt.Errorf("%w: s%d out of range", ErrMalformed, width))
				return 0
			}
			return x
		}
	}
	r.fail(fmt.Errorf("%w: s%d too long", ErrMalformed, width))
	return 0
}

func (r *reader) name() (string, []byte) {
	start := r.b
	n := r.u32()
	s := r.bytes(int(n))
	if r.err != nil {
		return "", nil
	}
	return string(s), start[:len(start)-len(r.b)]
}

func (r *reader) limits() {
	switch f := r.byte(); f {
	case 0:
		r.u32()
	case 1:
		r.u32()
		r.u32()
	default:
		r.fail(fmt.Errorf("%w: limits flags %#x (shared or 64-bit memory)", ErrUnsupported, f))
	}
}

func (r *reader) memarg(out []byte) []byte {
	align := r.u32()
	if align&0x40 != 0 {
		r.fail(fmt.Errorf("%w: multiple memories", ErrUnsupported))
	}
	out = appendU32(out, align)
	return appendU32(out, r.u32())
}

// blockType copies a block type: 0x40, a value type, or a type index (s33).
func (r *reader) blockType(out []byte) []byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail(fmt.Errorf("%w: unexpected end", ErrMalformed))
		return out
	}
	c := r.b[0]
	if c == 0x40 || c == 0x7F || c == 0x7E || c == 0x7D || c == 0x7C || c == 0x7B || c == 0x70 || c == 0x6F {
		r.b = r.b[1:]
		return append(out, c)
	}
	x := r.s64(33)
	if x < 0 {
		r.fail(fmt.Errorf("%w: block type %d", ErrMalformed, x))
	}
	return appendS64(out, x)
}

// appendU32 appends x as an unsigned LEB128 (encoding/binary's varint).
func appendU32(b []byte, x uint32) []byte { return binary.AppendUvarint(b, uint64(x)) }

func appendS64(b []byte, x int64) []byte {
	for {
		c := byte(x & 0x7F)
		x >>= 7
		if (x == 0 && c&0x40 == 0) || (x == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendName(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}
