package main

import (
	"fmt"
	"sort"

	"hsmemu/cryptoki/calls"
)

// genCodec writes what the table says about values: each attribute's kind
// (calls.Attrs), each mechanism's parameter serialiser (calls.Mechanisms,
// calls.Params) and each reply structure's decoder (calls.Structs).
func genCodec(e *emitter) error {
	e.p("#include <string.h>")
	e.p("")
	e.p("#include \"p11gen.h\"")
	genAttrKinds(e)
	if err := genParams(e); err != nil {
		return err
	}
	if err := genMechanisms(e); err != nil {
		return err
	}
	if err := genMessageCodec(e); err != nil {
		return err
	}
	for _, s := range usedStructs() {
		if err := genStructDecoder(e, s, calls.Structs[s]); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func sortedUint64Keys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

func genAttrKinds(e *emitter) {
	names := map[calls.AttrKind]string{
		calls.AttrBytes:    "HSM_ATTR_BYTES",
		calls.AttrUlong:    "HSM_ATTR_ULONG",
		calls.AttrBool:     "HSM_ATTR_BOOL",
		calls.AttrUlongs:   "HSM_ATTR_ULONGS",
		calls.AttrTemplate: "HSM_ATTR_TEMPLATE",
	}
	e.p("")
	e.p("/* hsm_attr_kind: how an attribute's value travels (calls.Attrs). */")
	e.p("int hsm_attr_kind(CK_ATTRIBUTE_TYPE type)")
	e.p("{")
	e.p("\tswitch (type) {")
	for _, t := range sortedUint64Keys(calls.Attrs) {
		k := calls.Attrs[t]
		if k == calls.AttrBytes {
			continue
		}
		e.p("\tcase 0x%08xUL:", t)
		e.p("\t\treturn %s;", names[k])
	}
	e.p("\tdefault:")
	e.p("\t\treturn HSM_ATTR_BYTES;")
	e.p("\t}")
	e.p("}")
}

// genParams writes one serialiser per parameter structure. Each takes a
// copy of the caller's structure (so an unaligned pParameter is harmless)
// and writes its fields in C declaration order.
func genParams(e *emitter) error {
	var names []string
	for _, s := range sortedKeys(calls.Params) {
		if messageIndex(s) < 0 { // message parameters: message.go
			names = append(names, s)
		}
	}
	e.p("")
	for _, s := range names {
		e.p("static void enc_%s(hsm_wbuf *w, const %s *p);", s, s)
	}
	for _, s := range names {
		e.p("")
		e.p("static void enc_%s(hsm_wbuf *w, const %s *p)", s, s)
		e.p("{")
		for _, f := range calls.Params[s] {
			switch f.Kind {
			case calls.FUlong:
				e.p("\thsm_put_u64(w, (uint64_t)p->%s);", f.Name)
			case calls.FByte:
				e.p("\thsm_put_u8(w, (uint8_t)p->%s);", f.Name)
			case calls.FVersion:
				e.p("\thsm_put_u8(w, p->%s.major);", f.Name)
				e.p("\thsm_put_u8(w, p->%s.minor);", f.Name)
			case calls.FChars:
				e.p("\t_Static_assert(sizeof p->%s == %d, \"%s.%s is %d bytes\");", f.Name, f.Size, s, f.Name, f.Size)
				e.p("\thsm_put_raw(w, p->%s, %d);", f.Name, f.Size)
			case calls.FBytes:
				if f.LenOf == "" {
					return fmt.Errorf("%s.%s: no length member", s, f.Name)
				}
				if f.LenBits {
					// The length counts bits: whole bytes only.
					e.p("\tif (p->%s %% 8 != 0) {", f.LenOf)
					e.p("\t\thsm_fail(w, CKR_MECHANISM_PARAM_INVALID);")
					e.p("\t\treturn;")
					e.p("\t}")
					e.p("\thsm_put_param_bytes(w, p->%s, p->%s / 8);", f.Name, f.LenOf)
					break
				}
				e.p("\thsm_put_param_bytes(w, p->%s, p->%s);", f.Name, f.LenOf)
			case calls.FStruct:
				e.p("\tif (p->%s == NULL) {", f.Name)
				e.p("\t\thsm_put_u8(w, 0);")
				e.p("\t} else {")
				e.p("\t\t%s n;", f.Struct)
				e.p("\t\tmemcpy(&n, p->%s, sizeof n);", f.Name)
				e.p("\t\thsm_put_u8(w, 1);")
				e.p("\t\tenc_%s(w, &n);", f.Struct)
				e.p("\t}")
			default:
				return fmt.Errorf("%s.%s: unknown field kind %d", s, f.Name, f.Kind)
			}
		}
		e.p("}")
	}
	return nil
}

// genMechanisms writes hsm_put_mechanism: type, presence, then the
// parameter as calls.Mechanisms says; a mechanism it does not list sends a
// parameter it was given as bytes, for the daemon to judge.
func genMechanisms(e *emitter) error {
	e.p("")
	e.p("void hsm_put_mechanism(hsm_wbuf *w, const CK_MECHANISM *m)")
	e.p("{")
	e.p("\tif (m->pParameter == NULL && m->ulParameterLen != 0) {")
	e.p("\t\thsm_fail(w, CKR_ARGUMENTS_BAD);")
	e.p("\t\treturn;")
	e.p("\t}")
	e.p("\thsm_put_u64(w, (uint64_t)m->mechanism);")
	e.p("\tif (m->pParameter == NULL || m->ulParameterLen == 0) {")
	e.p("\t\thsm_put_u8(w, 0);")
	e.p("\t\treturn;")
	e.p("\t}")
	e.p("\thsm_put_u8(w, 1);")
	e.p("\tswitch (m->mechanism) {")
	for _, mech := range sortedUint64Keys(calls.Mechanisms) {
		mp := calls.Mechanisms[mech]
		e.p("\tcase 0x%08xUL:", mech)
		switch mp.Kind {
		case calls.PBytes, calls.PNone:
			e.p("\t\tbreak;")
		case calls.PUlong:
			e.p("\t\tif (m->ulParameterLen != sizeof(CK_ULONG)) {")
			e.p("\t\t\thsm_fail(w, CKR_MECHANISM_PARAM_INVALID);")
			e.p("\t\t\treturn;")
			e.p("\t\t}")
			e.p("\t\t{")
			e.p("\t\t\tCK_ULONG v;")
			e.p("\t\t\tmemcpy(&v, m->pParameter, sizeof v);")
			e.p("\t\t\thsm_put_u64(w, (uint64_t)v);")
			e.p("\t\t}")
			e.p("\t\treturn;")
		case calls.PStruct:
			e.p("\t\tif (m->ulParameterLen != sizeof(%s)) {", mp.Struct)
			e.p("\t\t\thsm_fail(w, CKR_MECHANISM_PARAM_INVALID);")
			e.p("\t\t\treturn;")
			e.p("\t\t}")
			e.p("\t\t{")
			e.p("\t\t\t%s p;", mp.Struct)
			e.p("\t\t\tmemcpy(&p, m->pParameter, sizeof p);")
			e.p("\t\t\tenc_%s(w, &p);", mp.Struct)
			e.p("\t\t}")
			e.p("\t\treturn;")
		default:
			return fmt.Errorf("mechanism %#x: unknown parameter kind %d", mech, mp.Kind)
		}
	}
	e.p("\tdefault:")
	e.p("\t\tbreak;")
	e.p("\t}")
	e.p("\thsm_put_bytes(w, m->pParameter, m->ulParameterLen);")
	e.p("}")
	return nil
}

// genStructDecoder writes hsm_dec_<S>: a reply structure, field by field in
// C order. CK_ULONG fields map the wire's CK_UNAVAILABLE_INFORMATION to the
// host's; character arrays are checked against the header's sizes.
func genStructDecoder(e *emitter, s string, fields []calls.Field) error {
	e.p("")
	e.p("void hsm_dec_%s(hsm_rbuf *r, %s *o)", s, s)
	e.p("{")
	e.p("\tmemset(o, 0, sizeof *o);")
	for _, f := range fields {
		switch f.Kind {
		case calls.FUlong:
			e.p("\to->%s = hsm_get_ulong(r);", f.Name)
		case calls.FByte:
			e.p("\to->%s = hsm_get_u8(r);", f.Name)
		case calls.FVersion:
			e.p("\to->%s.major = hsm_get_u8(r);", f.Name)
			e.p("\to->%s.minor = hsm_get_u8(r);", f.Name)
		case calls.FChars:
			e.p("\t_Static_assert(sizeof o->%s == %d, \"%s.%s is %d bytes\");", f.Name, f.Size, s, f.Name, f.Size)
			e.p("\thsm_get_raw_into(r, o->%s, %d);", f.Name, f.Size)
		default:
			return fmt.Errorf("field %s: kind %d cannot be in a reply structure", f.Name, f.Kind)
		}
	}
	e.p("}")
	return nil
}
