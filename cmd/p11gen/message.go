package main

import (
	"fmt"
	"strings"

	"hsmemu/cryptoki/calls"
)

// The message-based calls' parameters (docs/protocol.md, "Message
// parameters"). pParameter is a void pointer whose structure depends on
// the mechanism its process began with, which the module does not keep:
// it tells the structures of calls.MessageParams apart by their sizes
// (the generated code asserts that no two have the same) and sends a form
// byte that says which one it read.

// genMessageHeader declares hsm_msgparam, a stub's record of the parameter
// it sent, and the functions over it.
func genMessageHeader(e *emitter) {
	e.p("/* A message parameter as a stub sent it (calls.MessageParams): its form,")
	e.p(" * a copy of the caller's structure or the caller's bytes, and the outputs")
	e.p(" * of the reply once checked. */")
	e.p("#define HSM_MSG_OUTS %d", hsmMsgOuts)
	e.p("typedef struct hsm_msgparam {")
	e.p("\tint form;                          /* 0 none, 1 bytes, 2+i calls.MessageParams[i] */")
	e.p("\tvoid *raw;                         /* form 1: the caller's buffer */")
	e.p("\tCK_ULONG raw_len;")
	e.p("\tunion {")
	for i, s := range calls.MessageParams {
		e.p("\t\t%s s%d;", s, i)
	}
	e.p("\t} u;                               /* form 2+i: a copy of the caller's structure */")
	e.p("\thsm_held_side out;                 /* the checked outputs, aliasing the reply (or a held copy) */")
	e.p("} hsm_msgparam;")
	e.p("_Static_assert(HSM_MSG_OUTS <= HSM_HELD_SIDES, \"a held result keeps every output of a parameter\");")
	e.p("")
	e.p("/* hsm_put_msgparam encodes a message parameter: structs is a bit mask of")
	e.p(" * the calls.MessageParams the argument takes, out says the call writes it")
	e.p(" * back. hsm_get_msgout reads the reply's outputs and checks them against")
	e.p(" * the caller's structure (1: they fit); hsm_msgparam_commit writes them. */")
	e.p("void hsm_put_msgparam(hsm_wbuf *w, hsm_msgparam *m, void *p, CK_ULONG len, unsigned structs, int out);")
	e.p("int hsm_get_msgout(hsm_rbuf *r, hsm_msgparam *m);")
	e.p("void hsm_msgparam_commit(const hsm_msgparam *m);")
	e.p("")
	e.p("/* hsm_put_msg_mechanism encodes a message-based Init's mechanism: for the")
	e.p(" * mechanisms of calls.MessageMechanisms, a parameter of their message")
	e.p(" * structure's size is accepted and not sent; the others as any Init's. */")
	e.p("void hsm_put_msg_mechanism(hsm_wbuf *w, const CK_MECHANISM *m);")
}

// msgLen is the C expression of an FBytes field's length in bytes.
func msgLen(f calls.Field) string {
	switch {
	case f.LenOf == "":
		return fmt.Sprint(f.Size)
	case f.LenBits:
		return fmt.Sprintf("p->%s / 8", f.LenOf)
	}
	return "p->" + f.LenOf
}

// genMessageCodec writes the functions genMessageHeader declares.
func genMessageCodec(e *emitter) error {
	ms := calls.MessageParams
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			e.p("")
			e.p("_Static_assert(sizeof(%s) != sizeof(%s), \"message parameters are told apart by size\");", ms[i], ms[j])
		}
	}
	for _, s := range ms {
		e.p("")
		e.p("/* %s: the fields; out: the call writes it back. */", s)
		e.p("static void enc_msg_%s(hsm_wbuf *w, const %s *p, int out)", s, s)
		e.p("{")
		e.p("\t(void)out;")
		for _, f := range calls.Params[s] {
			switch f.Kind {
			case calls.FUlong:
				e.p("\thsm_put_u64(w, (uint64_t)p->%s);", f.Name)
			case calls.FByte:
				e.p("\thsm_put_u8(w, (uint8_t)p->%s);", f.Name)
			case calls.FBytes:
				if f.LenBits {
					e.p("\tif (p->%s %% 8 != 0) {", f.LenOf)
					e.p("\t\thsm_fail(w, CKR_MECHANISM_PARAM_INVALID);")
					e.p("\t\treturn;")
					e.p("\t}")
				}
				if f.Out == calls.FOutOnly {
					e.p("\tif (out)")
					e.p("\t\thsm_put_outspec(w, p->%s != NULL, %s);", f.Name, msgLen(f))
					e.p("\telse")
					e.p("\t\thsm_put_msg_bytes(w, p->%s, %s);", f.Name, msgLen(f))
				} else {
					e.p("\thsm_put_msg_bytes(w, p->%s, %s);", f.Name, msgLen(f))
				}
			default:
				return fmt.Errorf("%s.%s: kind %d in a message parameter", s, f.Name, f.Kind)
			}
		}
		e.p("}")
	}

	e.p("")
	e.p("void hsm_put_msgparam(hsm_wbuf *w, hsm_msgparam *m, void *p, CK_ULONG len, unsigned structs, int out)")
	e.p("{")
	e.p("\tmemset(m, 0, sizeof *m);")
	e.p("\tif (p == NULL && len != 0) {")
	e.p("\t\thsm_fail(w, CKR_ARGUMENTS_BAD);")
	e.p("\t\treturn;")
	e.p("\t}")
	e.p("\tif (p == NULL || len == 0) {")
	e.p("\t\thsm_put_u8(w, 0);")
	e.p("\t\treturn;")
	e.p("\t}")
	e.p("\t(void)structs;")
	for i, s := range ms {
		e.p("\tif ((structs & %#xu) && len == sizeof(%s)) {", 1<<i, s)
		e.p("\t\tm->form = %d;", 2+i)
		e.p("\t\tmemcpy(&m->u.s%d, p, sizeof m->u.s%d);", i, i)
		e.p("\t\thsm_put_u8(w, %d);", 2+i)
		e.p("\t\tenc_msg_%s(w, &m->u.s%d, out);", s, i)
		e.p("\t\treturn;")
		e.p("\t}")
	}
	e.p("\tm->form = 1;")
	e.p("\tm->raw = p;")
	e.p("\tm->raw_len = len;")
	e.p("\thsm_put_u8(w, 1);")
	e.p("\thsm_put_bytes(w, p, len);")
	e.p("}")

	e.p("")
	e.p("/* get_out reads output k: NULL (not written back), or exactly n bytes for a")
	e.p(" * buffer that is there. */")
	e.p("static int get_out(hsm_rbuf *r, hsm_msgparam *m, int k, const void *buf, CK_ULONG n)")
	e.p("{")
	e.p("\tuint32_t got;")
	e.p("\tint isnull;")
	e.p("\tconst uint8_t *d = hsm_get_bytes(r, &got, &isnull);")
	e.p("\tif (r->bad)")
	e.p("\t\treturn 0;")
	e.p("\tif (isnull)")
	e.p("\t\treturn 1;")
	e.p("\tif (buf == NULL || (CK_ULONG)got != n)")
	e.p("\t\treturn 0;")
	e.p("\tm->out.p[k] = d;")
	e.p("\tm->out.n[k] = got;")
	e.p("\tm->out.set[k] = 1;")
	e.p("\treturn 1;")
	e.p("}")
	e.p("")
	e.p("int hsm_get_msgout(hsm_rbuf *r, hsm_msgparam *m)")
	e.p("{")
	e.p("\tuint8_t form = hsm_get_u8(r);")
	e.p("\tif (r->bad || form != m->form)")
	e.p("\t\treturn 0;")
	e.p("\tswitch (form) {")
	e.p("\tcase 0:")
	e.p("\t\treturn 1;")
	e.p("\tcase 1:")
	e.p("\t\treturn get_out(r, m, 0, m->raw, m->raw_len);")
	for i, s := range ms {
		e.p("\tcase %d: {", 2+i)
		e.p("\t\tconst %s *p = &m->u.s%d;", s, i)
		k := 0
		for _, f := range calls.Params[s] {
			if f.Kind != calls.FBytes || f.Out == calls.FIn {
				continue
			}
			e.p("\t\tif (!get_out(r, m, %d, p->%s, %s))", k, f.Name, msgLen(f))
			e.p("\t\t\treturn 0;")
			k++
		}
		if k == 0 {
			e.p("\t\t(void)p;")
		}
		e.p("\t\treturn 1;")
		e.p("\t}")
	}
	e.p("\t}")
	e.p("\treturn 0;")
	e.p("}")

	e.p("")
	e.p("void hsm_msgparam_commit(const hsm_msgparam *m)")
	e.p("{")
	e.p("\tswitch (m->form) {")
	e.p("\tcase 1:")
	e.p("\t\tif (m->out.set[0] && m->out.n[0] > 0)")
	e.p("\t\t\tmemcpy(m->raw, m->out.p[0], m->out.n[0]);")
	e.p("\t\tbreak;")
	for i, s := range ms {
		e.p("\tcase %d:", 2+i)
		k := 0
		for _, f := range calls.Params[s] {
			if f.Kind != calls.FBytes || f.Out == calls.FIn {
				continue
			}
			e.p("\t\tif (m->out.set[%d] && m->out.n[%d] > 0)", k, k)
			e.p("\t\t\tmemcpy(m->u.s%d.%s, m->out.p[%d], m->out.n[%d]);", i, f.Name, k, k)
			k++
		}
		e.p("\t\tbreak;")
	}
	e.p("\t}")
	e.p("}")

	e.p("")
	e.p("void hsm_put_msg_mechanism(hsm_wbuf *w, const CK_MECHANISM *m)")
	e.p("{")
	e.p("\tswitch (m->mechanism) {")
	for _, mech := range sortedUint64Keys(calls.MessageMechanisms) {
		s := calls.MessageMechanisms[mech]
		e.p("\tcase 0x%08xUL:", mech)
		e.p("\t\tif (m->pParameter == NULL && m->ulParameterLen != 0) {")
		e.p("\t\t\thsm_fail(w, CKR_ARGUMENTS_BAD);")
		e.p("\t\t\treturn;")
		e.p("\t\t}")
		e.p("\t\tif (m->pParameter != NULL && m->ulParameterLen != 0 && m->ulParameterLen != sizeof(%s)) {", s)
		e.p("\t\t\thsm_fail(w, CKR_MECHANISM_PARAM_INVALID);")
		e.p("\t\t\treturn;")
		e.p("\t\t}")
		e.p("\t\thsm_put_u64(w, (uint64_t)m->mechanism);")
		e.p("\t\thsm_put_u8(w, 0); /* each message brings its own */")
		e.p("\t\treturn;")
	}
	e.p("\tdefault:")
	e.p("\t\thsm_put_mechanism(w, m);")
	e.p("\t}")
	e.p("}")
	return nil
}

// structMask is the bit mask of an argument's message structures.
func structMask(a calls.Arg) string {
	var m uint
	for _, s := range a.Structs {
		m |= 1 << messageIndex(s)
	}
	return fmt.Sprintf("%#xu", m)
}

// msgVar is the stub's local hsm_msgparam for an argument.
func msgVar(a calls.Arg) string { return "mp_" + strings.ReplaceAll(a.Name, ".", "_") }
