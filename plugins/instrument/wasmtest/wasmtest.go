// Package wasmtest assembles small WebAssembly modules for tests: hand-made
// modules with exactly the behaviour a test needs (a loop in one export, a
// recursion, a start function), without a compiler.
package wasmtest

import "encoding/binary"

// Section ids.
const (
	secType     = 1
	secImport   = 2
	secFunction = 3
	secTable    = 4
	secMemory   = 5
	secGlobal   = 6
	secExport   = 7
	secStart    = 8
	secElement  = 9
	secCode     = 10
)

func appendU32(b []byte, x uint32) []byte { return binary.AppendUvarint(b, uint64(x)) }

// AppendS64 appends x as a signed LEB128.
func AppendS64(b []byte, x int64) []byte {
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

// Func is one function: its export name ("" for none), type index, raw
// local declarations (nil: none) and body without the final end.
type Func struct {
	Name   string
	Type   uint32
	Locals []byte
	Body   []byte
}

// Module describes a module; Bytes encodes it.
type Module struct {
	Types     [][2][]byte // params, results (value type bytes)
	Imports   []Import    // functions only
	MemPages  uint32      // 0: no memory; else a memory exported as "memory"
	Globals   [][]byte    // raw global entries (type, mutability, init expr)
	Funcs     []Func
	Start     int      // index into Funcs + 1 (0: no start section)
	Table     bool     // a funcref table of len(ElemFuncs), filled at offset 0
	ElemFuncs []uint32 // function indices
	Custom    []byte   // a "name" custom section body
}

func appendSection(out []byte, id byte, body []byte) []byte {
	out = append(out, id)
	out = appendU32(out, uint32(len(body)))
	return append(out, body...)
}

// Import is an imported function.
type Import struct {
	Mod, Name string
	Type      uint32
}

// Bytes encodes the module.
func (m Module) Bytes() []byte {
	out := []byte("\x00asm\x01\x00\x00\x00")
	if m.Custom != nil {
		out = appendSection(out, 0, append(appendName(nil, "name"), m.Custom...))
	}
	if len(m.Types) > 0 {
		b := appendU32(nil, uint32(len(m.Types)))
		for _, t := range m.Types {
			b = append(b, 0x60)
			b = appendU32(b, uint32(len(t[0])))
			b = append(b, t[0]...)
			b = appendU32(b, uint32(len(t[1])))
			b = append(b, t[1]...)
		}
		out = appendSection(out, secType, b)
	}
	if len(m.Imports) > 0 {
		b := appendU32(nil, uint32(len(m.Imports)))
		for _, im := range m.Imports {
			b = appendName(b, im.Mod)
			b = appendName(b, im.Name)
			b = append(b, 0)
			b = appendU32(b, im.Type)
		}
		out = appendSection(out, secImport, b)
	}
	b := appendU32(nil, uint32(len(m.Funcs)))
	for _, f := range m.Funcs {
		b = appendU32(b, f.Type)
	}
	out = appendSection(out, secFunction, b)
	if m.Table {
		out = appendSection(out, secTable, []byte{1, 0x70, 0, byte(len(m.ElemFuncs))})
	}
	if m.MemPages > 0 {
		b := []byte{1, 0}
		b = appendU32(b, m.MemPages)
		out = appendSection(out, secMemory, b)
	}
	if len(m.Globals) > 0 {
		b := appendU32(nil, uint32(len(m.Globals)))
		for _, g := range m.Globals {
			b = append(b, g...)
		}
		out = appendSection(out, secGlobal, b)
	}
	var ex []byte
	n := 0
	for i, f := range m.Funcs {
		if f.Name != "" {
			ex = appendName(ex, f.Name)
			ex = append(ex, 0)
			ex = appendU32(ex, uint32(len(m.Imports)+i))
			n++
		}
	}
	if m.MemPages > 0 {
		ex = appendName(ex, "memory")
		ex = append(ex, 2, 0)
		n++
	}
	out = appendSection(out, secExport, append(appendU32(nil, uint32(n)), ex...))
	if m.Start > 0 {
		out = appendSection(out, secStart, appendU32(nil, uint32(len(m.Imports)+m.Start-1)))
	}
	if m.Table {
		b := []byte{1, 0, 0x41, 0, 0x0B}
		b = appendU32(b, uint32(len(m.ElemFuncs)))
		for _, f := range m.ElemFuncs {
			b = appendU32(b, f)
		}
		out = appendSection(out, secElement, b)
	}
	b = appendU32(nil, uint32(len(m.Funcs)))
	for _, f := range m.Funcs {
		body := f.Locals
		if body == nil {
			body = []byte{0}
		}
		body = append(append(append([]byte(nil), body...), f.Body...), 0x0B)
		b = appendU32(b, uint32(len(body)))
		b = append(b, body...)
	}
	out = appendSection(out, secCode, b)
	return out
}

// Value types.
const (
	I32 = 0x7F
	I64 = 0x7E
)

// I32Const is the instruction i32.const v.
func I32Const(v int64) []byte { return AppendS64([]byte{0x41}, v) }

// Cat concatenates instruction bytes.
func Cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// ABIModule is a hand-made step plugin implementing the ABI's six exports (and
// _initialize) trivially, except that export hang never returns: it loops,
// or recurses without end when hang is "recursion" (qkd_step then
// calls a function that calls itself twice, 62 levels deep: no loop at all).
// With hang "" every call returns at once and qkd_step never reports done.
func ABIModule(hang string) []byte {
	const (
		tVoid = iota // () → ()
		tRet         // () → i32
		tOne         // (i32) → i32
		tFive        // (i32 ×5) → i32
		tRec         // (i32) → ()
	)
	i5 := []byte{I32, I32, I32, I32, I32}
	loop := []byte{0x03, 0x40, 0x0C, 0x00, 0x0B} // loop br 0 end
	ret := func(v int64) []byte { return I32Const(v) }
	fns := []Func{
		{Name: "_initialize", Type: tVoid},
		{Name: "qkd_abi_version", Type: tRet, Body: ret(1)},
		{Name: "qkd_alloc", Type: tOne, Body: ret(1024)},
		{Name: "qkd_new", Type: tFive, Body: ret(0)},
		{Name: "qkd_step", Type: tFive, Body: ret(0)},
		{Name: "qkd_result_ptr", Type: tRet, Body: ret(4096)}, // 40 zero bytes: a valid "not done" result
		{Name: "qkd_result_len", Type: tRet, Body: ret(40)},
		// rec(n): if n { rec(n-1); rec(n-1) } — 2^n calls, no loop at all
		{Type: tRec, Body: Cat([]byte{0x20, 0, 0x04, 0x40},
			[]byte{0x20, 0}, I32Const(1), []byte{0x6B, 0x10, 7},
			[]byte{0x20, 0}, I32Const(1), []byte{0x6B, 0x10, 7}, []byte{0x0B})},
	}
	for i := range fns {
		if hang == "" || fns[i].Name != hang {
			continue
		}
		var result []byte
		if fns[i].Type != tVoid {
			result = ret(0)
		}
		fns[i].Body = Cat(loop, result)
	}
	if hang == "recursion" {
		fns[4].Body = Cat(I32Const(62), []byte{0x10, 7}, ret(0))
	}
	return Module{
		Types: [][2][]byte{
			tVoid: {nil, nil}, tRet: {nil, {I32}}, tOne: {{I32}, {I32}},
			tFive: {i5, {I32}}, tRec: {{I32}, nil},
		},
		MemPages: 1,
		Funcs:    fns,
	}.Bytes()
}
