package etsi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// RequestError is a request the KME refuses with 400: Message is what the
// client sees, Details the per-parameter reasons.
type RequestError struct {
	Message string
	Details []map[string]any
}

func (e *RequestError) Error() string {
	if len(e.Details) == 0 {
		return e.Message
	}
	return fmt.Sprintf("%s: %v", e.Message, e.Details)
}

func badRequest(msg string, param string, reason string) *RequestError {
	d := map[string]any{"reason": reason}
	if param != "" {
		d["parameter"] = param
	}
	return &RequestError{Message: msg, Details: []map[string]any{d}}
}

// CheckJSON verifies that body is exactly one JSON value, valid UTF-8,
// nested at most 64 deep, with no object that repeats a member name and
// nothing but white space after it. encoding/json alone accepts duplicate
// names (last one wins), which would make a request mean different things
// to different parsers.
func CheckJSON(body []byte) error {
	if !utf8.Valid(body) {
		return badRequest("malformed JSON", "", "body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := walkJSON(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("malformed JSON", "", "trailing data after the JSON value")
	}
	return nil
}

func walkJSON(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return badRequest("malformed JSON", "", fmt.Sprintf("nested deeper than %d", maxJSONDepth))
	}
	tok, err := dec.Token()
	if err != nil {
		return badRequest("malformed JSON", "", syntaxReason(err))
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]struct{}{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return badRequest("malformed JSON", "", syntaxReason(err))
			}
			name, ok := kt.(string)
			if !ok {
				return badRequest("malformed JSON", "", "object member name is not a string")
			}
			if _, dup := seen[name]; dup {
				return badRequest("duplicate JSON member name", name, "a member name appears twice in one object")
			}
			seen[name] = struct{}{}
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	default:
		return badRequest("malformed JSON", "", "unexpected delimiter")
	}
	if _, err := dec.Token(); err != nil { // closing delimiter
		return badRequest("malformed JSON", "", syntaxReason(err))
	}
	return nil
}

func syntaxReason(err error) string {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of JSON input"
	}
	return err.Error()
}

// parseObject checks body (CheckJSON) and splits a top-level object into
// its members, keyed by their exact names (encoding/json would match names
// case-insensitively).
func parseObject(body []byte) (map[string]json.RawMessage, error) {
	if err := CheckJSON(body); err != nil {
		return nil, err
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, badRequest("wrong type", "", "the request body shall be a JSON object")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, badRequest("malformed JSON", "", err.Error())
	}
	return m, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// parseInt reads a JSON integer: no strings, fractions or exponents, within
// int64 (and int).
func parseInt(name string, raw json.RawMessage) (int, error) {
	s := string(raw)
	if s == "" || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) {
		return 0, badRequest("wrong type", name, name+" shall be an integer")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, badRequest("number out of range", name, name+" is out of range")
		}
		if strings.ContainsAny(s, ".eE") {
			// 1e400 or 1.5: a number, but not an integer we accept.
			if _, ferr := strconv.ParseFloat(s, 64); ferr != nil {
				return 0, badRequest("number out of range", name, name+" is out of range")
			}
		}
		return 0, badRequest("wrong type", name, name+" shall be an integer")
	}
	if int64(int(n)) != n {
		return 0, badRequest("number out of range", name, name+" is out of range")
	}
	return int(n), nil
}

func parseString(name string, raw json.RawMessage) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", badRequest("wrong type", name, name+" shall be a string")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", badRequest("wrong type", name, name+" shall be a string")
	}
	return s, nil
}

func parseArray(name string, raw json.RawMessage) ([]json.RawMessage, error) {
	if len(raw) == 0 || raw[0] != '[' {
		return nil, badRequest("wrong type", name, name+" shall be an array")
	}
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, badRequest("wrong type", name, name+" shall be an array")
	}
	return a, nil
}

func parseObjectRaw(name string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, badRequest("wrong type", name, name+" shall be an object")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, badRequest("wrong type", name, name+" shall be an object")
	}
	return m, nil
}

// ValidSAEID reports whether id can be an SAE ID: 1-128 bytes of printable
// characters without '/', '\', ':' or spaces (what a certificate issued by
// pki can carry).
func ValidSAEID(id string) bool {
	if id == "" || len(id) > maxSAEIDLen || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if r < 0x21 || r == 0x7f || r == '/' || r == '\\' || r == ':' {
			return false
		}
	}
	return true
}

// DecodeKeyRequest decodes an enc_keys POST body. An empty (or white
// space only) body is the default request. The result has Number and Size
// zero when absent (or null); present values are positive. Additional
// slave SAE IDs are syntactically valid and distinct; a non-empty
// extension_mandatory is refused with the spec message (no extension is
// supported); extension_optional must be an array of objects and is
// otherwise ignored, as are unknown members. Limits that depend on the
// connection are checked by Validate.
func DecodeKeyRequest(body []byte) (KeyRequest, error) {
	var req KeyRequest
	if len(bytes.TrimSpace(body)) == 0 {
		return req, nil
	}
	m, err := parseObject(body)
	if err != nil {
		return req, err
	}
	if raw, ok := m["number"]; ok && !isNull(raw) {
		n, err := parseInt("number", raw)
		if err != nil {
			return req, err
		}
		if n <= 0 {
			return req, badRequest("number shall be a positive integer", "number", fmt.Sprintf("got %d", n))
		}
		req.Number = n
	}
	if raw, ok := m["size"]; ok && !isNull(raw) {
		n, err := parseInt("size", raw)
		if err != nil {
			return req, err
		}
		if n <= 0 {
			return req, badRequest("size shall be a positive integer", "size", fmt.Sprintf("got %d", n))
		}
		req.Size = n
	}
	if raw, ok := m["additional_slave_SAE_IDs"]; ok && !isNull(raw) {
		const name = "additional_slave_SAE_IDs"
		arr, err := parseArray(name, raw)
		if err != nil {
			return req, err
		}
		seen := map[string]bool{}
		ids := make([]string, 0, len(arr))
		for _, el := range arr {
			id, err := parseString(name, el)
			if err != nil {
				return req, err
			}
			if !ValidSAEID(id) {
				return req, badRequest("invalid SAE ID in additional_slave_SAE_IDs", name, fmt.Sprintf("%q is not a valid SAE ID", id))
			}
			if seen[id] {
				return req, badRequest("duplicate SAE ID in additional_slave_SAE_IDs", name, fmt.Sprintf("%q appears twice", id))
			}
			seen[id] = true
			ids = append(ids, id)
		}
		if len(ids) > 0 {
			req.AdditionalSlaveSAEIDs = ids
		}
	}
	for _, name := range []string{"extension_mandatory", "extension_optional"} {
		raw, ok := m[name]
		if !ok || isNull(raw) {
			continue
		}
		arr, err := parseArray(name, raw)
		if err != nil {
			return req, err
		}
		var unsupported []string
		for _, el := range arr {
			obj, err := parseObjectRaw(name, el)
			if err != nil {
				return req, err
			}
			for k := range obj {
				unsupported = append(unsupported, k)
			}
		}
		if name == "extension_mandatory" && len(unsupported) > 0 {
			details := make([]map[string]any, 0, len(unsupported))
			for _, k := range unsupported {
				details = append(details, map[string]any{"parameter": "extension_mandatory", "extension": k, "reason": "not supported"})
			}
			return req, &RequestError{Message: MsgExtensionMandatory, Details: details}
		}
	}
	return req, nil
}

// ConnectionLimits checks a decoded request against the connection it is
// made on, fills in the defaults and returns the request to pass on:
// number ≤ max_key_per_request, size a multiple of 8 within
// [min_key_size, max_key_size], at most max_SAE_ID_count additional slaves,
// none of them the master or the slave.
func ConnectionLimits(req KeyRequest, c ConnectionInfo) (EncRequest, error) {
	out := EncRequest{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE, Number: req.Number, Size: req.Size}
	if out.Number == 0 {
		out.Number = 1
	}
	if out.Size == 0 {
		out.Size = c.KeySize
	}
	if out.Number > c.MaxKeyPerRequest {
		return out, badRequest("number exceeds max_key_per_request", "number",
			fmt.Sprintf("number %d > max_key_per_request %d", out.Number, c.MaxKeyPerRequest))
	}
	if out.Size%8 != 0 {
		return out, badRequest(MsgSizeMultipleOf8, "size", fmt.Sprintf("size %d", out.Size))
	}
	if out.Size < c.MinKeySize || out.Size > c.MaxKeySize {
		return out, badRequest("size shall be between min_key_size and max_key_size", "size",
			fmt.Sprintf("size %d outside [%d, %d]", out.Size, c.MinKeySize, c.MaxKeySize))
	}
	if len(req.AdditionalSlaveSAEIDs) > c.MaxSAEIDCount {
		return out, badRequest("additional_slave_SAE_IDs exceeds max_SAE_ID_count", "additional_slave_SAE_IDs",
			fmt.Sprintf("%d > max_SAE_ID_count %d", len(req.AdditionalSlaveSAEIDs), c.MaxSAEIDCount))
	}
	seen := map[string]bool{}
	for _, id := range req.AdditionalSlaveSAEIDs {
		switch {
		case id == c.MasterSAE:
			return out, badRequest("additional_slave_SAE_IDs shall not name the master SAE", "additional_slave_SAE_IDs", id)
		case id == c.SlaveSAE:
			return out, badRequest("additional_slave_SAE_IDs shall not name the slave SAE", "additional_slave_SAE_IDs", id)
		case seen[id]:
			return out, badRequest("duplicate SAE ID in additional_slave_SAE_IDs", "additional_slave_SAE_IDs", id)
		}
		seen[id] = true
	}
	if len(req.AdditionalSlaveSAEIDs) > 0 {
		out.Additional = append([]string(nil), req.AdditionalSlaveSAEIDs...)
	}
	return out, nil
}

// CanonicalKeyID returns the canonical (lowercase, hyphenated) form of a
// key ID given as 8-4-4-4-12 hexadecimal digits in either case; ok is
// false for anything else (braces, URN prefix, no hyphens, empty).
func CanonicalKeyID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			switch {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			case c >= 'A' && c <= 'F':
				b[i] = c + ('a' - 'A')
			default:
				return "", false
			}
		}
	}
	return string(b), true
}

// DecodeKeyIDs decodes a dec_keys POST body into canonical key IDs, in
// request order. key_IDs is required and shall hold at least one object
// with a string key_ID; extra members in those objects (key_ID_extension,
// or a whole key object sent back) and unknown top-level members are
// ignored. An empty list, an empty, non-UUID or repeated key ID is refused
// with the spec message "one or more keys specified are not found on KME".
func DecodeKeyIDs(body []byte) ([]string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("key_IDs is required", "key_IDs", "empty request body")
	}
	m, err := parseObject(body)
	if err != nil {
		return nil, err
	}
	raw, ok := m["key_IDs"]
	if !ok || isNull(raw) {
		return nil, badRequest("key_IDs is required", "key_IDs", "missing")
	}
	arr, err := parseArray("key_IDs", raw)
	if err != nil {
		return nil, err
	}
	if len(arr) == 0 {
		return nil, badRequest(MsgKeysNotFound, "key_IDs", "no key ID given")
	}
	ids := make([]string, 0, len(arr))
	for _, el := range arr {
		obj, err := parseObjectRaw("key_IDs", el)
		if err != nil {
			return nil, err
		}
		idRaw, ok := obj["key_ID"]
		if !ok {
			return nil, badRequest("key_ID is required", "key_ID", "a key_IDs element has no key_ID")
		}
		s, err := parseString("key_ID", idRaw)
		if err != nil {
			return nil, err
		}
		ids = append(ids, s)
	}
	return CheckKeyIDs(ids)
}

// CheckKeyIDs canonicalises key IDs and refuses empty, non-UUID and
// repeated ones (spec message).
func CheckKeyIDs(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, badRequest(MsgKeysNotFound, "key_ID", "no key ID given")
	}
	out := make([]string, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, s := range in {
		id, ok := CanonicalKeyID(s)
		if !ok {
			return nil, badRequest(MsgKeysNotFound, "key_ID", fmt.Sprintf("%q is not a UUID", truncate(s, 64)))
		}
		if seen[id] {
			return nil, badRequest(MsgKeysNotFound, "key_ID", fmt.Sprintf("%s is given twice", id))
		}
		seen[id] = true
		out = append(out, id)
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
