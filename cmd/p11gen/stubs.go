package main

import (
	"fmt"
	"strings"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// genStubs writes one C function per forwarded call. Each one:
//
//  1. returns CKR_CRYPTOKI_NOT_INITIALIZED unless the library is
//     initialised in this process (hsm_entry);
//  2. refuses NULL pointers the specification does not allow, NULL data
//     with a non-zero length, a NULL template with a non-zero count and a
//     non-NULL reserved pointer, with CKR_ARGUMENTS_BAD;
//  3. encodes its arguments (docs/protocol.md) and runs the call;
//  4. without a daemon, gives the call's offline answer;
//  5. decodes the whole reply into locals and checks it against the
//     caller's buffers, and only then writes the outputs, so a malformed
//     reply (CKR_DEVICE_ERROR) never leaves half-written outputs.
func genStubs(e *emitter) error {
	e.p("#include <string.h>")
	e.p("")
	e.p("#include \"p11gen.h\"")
	for _, c := range forwarded() {
		if err := genStub(e, c); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	return nil
}

func genStub(e *emitter, c *calls.Call) error {
	e.p("")
	e.p("/* %s: call %d. */", c.Name, c.ID)
	e.p("CK_RV %s(%s)", c.Name, prototype(c))
	e.p("{")
	e.p("\thsm_call c;")
	for _, a := range c.Args {
		if a.Kind == calls.MsgParam || a.Kind == calls.MsgParamOut {
			e.p("\thsm_msgparam %s;", msgVar(a))
		}
	}
	e.p("\tCK_RV rv = hsm_entry();")
	e.p("")
	e.p("\tif (rv != CKR_OK)")
	e.p("\t\treturn rv;")
	for _, a := range c.Args {
		genCheck(e, c, a)
	}
	e.p("")
	e.p("\thsm_stats_call();")
	e.p("\thsm_call_init(&c, %d);", c.ID)
	if rv := calls.TooLarge(c); rv != ck.CKR_ARGUMENTS_BAD {
		e.p("\tc.req.too_large = %#xUL;", rv)
	}
	for _, a := range c.Args {
		if c.Name == cancelCall().Name && a.Name == "flags" {
			// The module's own flag is not an application's to pass.
			e.p("\thsm_put_u64(&c.req, (uint64_t)%s & ~(uint64_t)%#xULL);", a.Name, uint64(calls.ModuleCancelFlags))
			continue
		}
		if a.Kind == calls.OptOutBytes && calls.Prefetches(c) {
			// Only the last part, with a length pointer, has an output.
			e.p("\thsm_put_u8(&c.req, %s_len != NULL);", a.Name)
			e.p("\tif (%s_len != NULL)", a.Name)
			e.p("\t\thsm_put_outspec_prefetch(&c.req, %s != NULL, *%s_len);", a.Name, a.Name)
			e.p("\tc.req.prefetch_version = %d;", calls.PrefetchVersion(c))
			continue
		}
		if a.Kind == calls.OutBytes && calls.Prefetches(c) {
			e.p("\thsm_put_outspec_prefetch(&c.req, %s != NULL, *%s_len);", a.Name, a.Name)
			if v := calls.PrefetchVersion(c); v > 3 {
				e.p("\tc.req.prefetch_version = %d;", v)
			}
			if calls.PrefetchGoesOn(c) {
				// The operation goes on after the follow-up (held.c).
				e.p("\tc.goes_on = 1;")
			}
			continue
		}
		genEncode(e, a)
	}
	if f := calls.PrefetchLastPartFlags(c); f != "" {
		// The message goes on after the follow-up of any part but the
		// last (held.c).
		e.p("\tc.goes_on = %s != %#xUL;", f, uint64(ck.CKF_END_OF_MESSAGE))
	}
	genRole(e, c)
	if out, ok := prefetchOut(c); ok {
		// A result the daemon gave with the size query (held.c), and
		// what a message's parameter gets back with it.
		if mp, ok := msgOutArg(c); ok {
			e.p("\tif (hsm_held_serve(&c, %s, %s_len, &rv, &%s.out)) {", out.Name, out.Name, msgVar(mp))
			e.p("\t\thsm_msgparam_commit(&%s);", msgVar(mp))
			e.p("\t\thsm_held_side_release(&%s.out);", msgVar(mp))
			e.p("\t\tgoto out;")
			e.p("\t}")
		} else if out.Kind == calls.OptOutBytes {
			e.p("\tif (%s_len != NULL && hsm_held_serve(&c, %s, %s_len, &rv, NULL))", out.Name, out.Name, out.Name)
			e.p("\t\tgoto out;")
		} else {
			e.p("\tif (hsm_held_serve(&c, %s, %s_len, &rv, NULL))", out.Name, out.Name)
			e.p("\t\tgoto out;")
		}
	}
	if c.Name == "C_WaitForSlotEvent" {
		e.p("\tif (!(flags & CKF_DONT_BLOCK))")
		e.p("\t\tc.timeout_ms = 0; /* blocks until an event, or C_Finalize */")
	}
	e.p("")
	e.p("\tswitch (hsm_call_run(&c)) {")
	e.p("\tcase HSM_OFFLINE:")
	off, err := offlineKind(c)
	if err != nil {
		return err
	}
	switch off {
	case offSession:
		e.p("\t\trv = CKR_SESSION_HANDLE_INVALID;")
	case offSlot:
		e.p("\t\trv = hsm_offline_slot(%s);", c.Args[0].Name)
	case offSlotList:
		e.p("\t\trv = hsm_offline_slot_list(%s, %s, %s_count);", c.Args[0].Name, c.Args[1].Name, c.Args[1].Name)
	case offSlotInfo:
		e.p("\t\trv = hsm_offline_slot_info(%s, %s);", c.Args[0].Name, c.Args[1].Name)
	case offWait:
		e.p("\t\trv = hsm_offline_wait(%s);", c.Args[0].Name)
	}
	e.p("\t\tgoto out;")
	e.p("\tcase HSM_FAILED:")
	e.p("\t\trv = c.rv;")
	e.p("\t\tgoto out;")
	e.p("\tcase HSM_REPLIED:")
	e.p("\t\tbreak;")
	e.p("\t}")
	e.p("\trv = c.rv;")

	var outs []calls.Arg
	for _, a := range c.Args {
		if isOutput(a.Kind) {
			outs = append(outs, a)
		}
	}
	if len(outs) == 0 {
		e.p("\tif (c.has_results && !hsm_get_end(&c.res))")
		e.p("\t\trv = CKR_DEVICE_ERROR;")
	} else {
		e.p("\tif (!c.has_results) {")
		e.p("\t\tif (rv == CKR_OK)")
		e.p("\t\t\trv = CKR_DEVICE_ERROR; /* CKR_OK always carries results */")
		e.p("\t\tgoto out;")
		e.p("\t}")
		e.p("\t{")
		for _, a := range outs {
			genDecode(e, a)
		}
		// A prefetched result is held only from a reply that decoded
		// exactly: a malformed one is CKR_DEVICE_ERROR below, and
		// nothing of it may answer a later call. Held or not, the
		// result leaves the reply here (the caller gets the length).
		for _, a := range outs {
			if (a.Kind == calls.OutBytes || a.Kind == calls.OptOutBytes) && calls.Prefetches(c) {
				if mp, ok := msgOutArg(c); ok {
					e.p("\t\thsm_held_keep(&c, &o_%s, %s, &%s.out, o_%s_ok && hsm_get_end(&c.res));", a.Name, a.Name, msgVar(mp), mp.Name)
				} else if a.Kind == calls.OptOutBytes {
					e.p("\t\thsm_held_keep(&c, &o_%s, %s, NULL, o_%s_ok && hsm_get_end(&c.res));", a.Name, a.Name, a.Name)
				} else {
					e.p("\t\thsm_held_keep(&c, &o_%s, %s, NULL, hsm_get_end(&c.res));", a.Name, a.Name)
				}
			}
		}
		conds := []string{"!hsm_get_end(&c.res)"}
		for _, a := range outs {
			if chk := outCheck(a); chk != "" {
				conds = append(conds, "!("+chk+")")
			}
		}
		e.p("\t\tif (%s) {", strings.Join(conds, " ||\n\t\t    "))
		e.p("\t\t\trv = CKR_DEVICE_ERROR;")
		e.p("\t\t\tgoto out;")
		e.p("\t\t}")
		for _, a := range outs {
			genCommit(e, a)
		}
		e.p("\t}")
	}
	e.p("out:")
	e.p("\thsm_call_end(&c);")
	e.p("\treturn rv;")
	e.p("}")
	return nil
}

// prefetchOut is the output a prefetching call's size query may bring in
// full (calls.Prefetches).
func prefetchOut(c *calls.Call) (calls.Arg, bool) {
	if !calls.Prefetches(c) {
		return calls.Arg{}, false
	}
	for _, a := range c.Args {
		if a.Kind == calls.OutBytes || a.Kind == calls.OptOutBytes {
			return a, true
		}
	}
	panic("p11gen: " + c.Name + " prefetches but has no OutBytes output")
}

// msgOutArg is a call's message parameter that it writes back
// (calls.MsgParamOut), if it has one.
func msgOutArg(c *calls.Call) (calls.Arg, bool) {
	for _, a := range c.Args {
		if a.Kind == calls.MsgParamOut {
			return a, true
		}
	}
	return calls.Arg{}, false
}

// genRole writes what the call is to deferred Inits (calls.RoleOf,
// cryptoki/module/defer.c). An Init's shape is its mechanism, byte strings
// only by their length, and its key.
func genRole(e *emitter, c *calls.Call) {
	r := calls.RoleOf(c)
	if calls.OnSession(c) {
		e.p("\tc.on_session = 1;")
		e.p("\tc.session = (uint64_t)session;")
	}
	// A message-based Init is never held back (calls.MessageKinds).
	if r.Starts != 0 && r.Starts&calls.MessageKinds == 0 {
		e.p("\tc.starts = %d;", r.Starts)
		for _, a := range c.Args[1:] {
			switch a.Kind {
			case calls.Mechanism:
				e.p("\thsm_call_shape(&c, %s);", a.Name)
			case calls.Ulong:
				e.p("\thsm_put_u64(&c.shape, (uint64_t)%s);", a.Name)
			}
		}
	}
	if r.Continues != 0 {
		e.p("\tc.continues = %d;", r.Continues)
		e.p("\tc.cancel_call = %d;", cancelCall().ID)
		e.p("\tc.cancel_flags = %#xULL;", calls.AbandonFlags(r.Continues))
	}
	if r.VerifySignature == calls.SignatureContinues {
		// An argument the encoding refuses ends the operation too.
		e.p("\tc.cancel_call = %d;", cancelCall().ID)
		e.p("\tc.cancel_flags = %#xULL;", uint64(calls.CancelVerifySignature))
	}
	if r.Mutates {
		e.p("\tc.mutates = 1;")
	}
	if r.Closes {
		e.p("\tc.closes = 1;")
	}
}

// genCheck writes the argument checks that precede any encoding. A call
// that continues an operation ends it when it refuses its arguments
// (5.2: every error but CKR_BUFFER_TOO_SMALL ends the operation); an Init
// given a NULL mechanism ends its kind of operation (3.0), through
// C_SessionCancel. The verification C_VerifySignatureInit begins is
// ended likewise (3.2), with calls.CancelVerifySignature.
func genCheck(e *emitter, c *calls.Call, a calls.Arg) {
	n := a.Name
	r := calls.RoleOf(c)
	fail := "CKR_ARGUMENTS_BAD"
	switch {
	case r.Continues != 0:
		fail = fmt.Sprintf("hsm_call_abandon(session, %d, %d, %#xULL, CKR_ARGUMENTS_BAD)", cancelCall().ID, r.Continues, calls.AbandonFlags(r.Continues))
	case r.VerifySignature == calls.SignatureContinues:
		fail = fmt.Sprintf("hsm_call_abandon(session, %d, 0, %#xULL, CKR_ARGUMENTS_BAD)", cancelCall().ID, uint64(calls.CancelVerifySignature))
	}
	bad := func(cond string) {
		e.p("\tif (%s)", cond)
		e.p("\t\treturn %s;", fail)
	}
	switch a.Kind {
	case calls.MsgParam, calls.MsgParamOut:
		if a.Mech {
			bad(fmt.Sprintf("%s == NULL || (%s->pParameter == NULL && %s->ulParameterLen != 0)", n, n, n))
			return
		}
		bad(fmt.Sprintf("%s == NULL && %s_len != 0", n, n))
	case calls.Bytes, calls.OutFilled:
		bad(fmt.Sprintf("%s == NULL && %s_len != 0", n, n))
	case calls.Mechanism:
		if r.Starts != 0 {
			e.p("\tif (%s == NULL) /* ends an operation of its kind */", n)
			e.p("\t\treturn hsm_call_cancel(session, %d, %d, %#xULL);", cancelCall().ID, r.Starts, calls.CancelFlags(r.Starts))
			return
		}
		if r.VerifySignature == calls.SignatureStarts {
			e.p("\tif (%s == NULL) /* ends the verification (3.2) */", n)
			e.p("\t\treturn hsm_call_cancel(session, %d, 0, %#xULL);", cancelCall().ID, uint64(calls.CancelVerifySignature))
			return
		}
		bad(fmt.Sprintf("%s == NULL", n))
	case calls.Label, calls.OutUlong, calls.OutStruct:
		bad(fmt.Sprintf("%s == NULL", n))
	case calls.Template, calls.AttrQuery:
		bad(fmt.Sprintf("%s == NULL && %s_count != 0", n, n))
	case calls.OutBytes:
		bad(fmt.Sprintf("%s_len == NULL", n))
	case calls.OutUlongs:
		bad(fmt.Sprintf("%s_count == NULL", n))
	case calls.OutHandles:
		bad(fmt.Sprintf("%s_count == NULL || (%s == NULL && %s_max != 0)", n, n, n))
	case calls.Reserved:
		bad(fmt.Sprintf("%s != NULL", n))
	case calls.OptOutBytes:
		// A NULL length pointer is valid: the call has no output.
	case calls.Ignored:
		e.p("\t(void)%s;", n)
	}
}

// cancelCall is C_SessionCancel, which ends operations.
func cancelCall() *calls.Call {
	c, ok := calls.ByName("C_SessionCancel")
	if !ok || c.Mode != calls.Forwarded {
		panic("p11gen: C_SessionCancel is not forwarded")
	}
	return c
}

// genEncode writes an argument into the request (docs/protocol.md, "Values").
func genEncode(e *emitter, a calls.Arg) {
	n := a.Name
	switch a.Kind {
	case calls.Ulong:
		e.p("\thsm_put_u64(&c.req, (uint64_t)%s);", n)
	case calls.Byte:
		e.p("\thsm_put_u8(&c.req, (uint8_t)%s);", n)
	case calls.Bytes:
		e.p("\thsm_put_bytes(&c.req, %s, %s_len);", n, n)
	case calls.Label:
		e.p("\thsm_put_bytes(&c.req, %s, 32);", n)
	case calls.Template:
		e.p("\thsm_put_template(&c.req, %s, %s_count);", n, n)
	case calls.AttrQuery:
		e.p("\thsm_put_query(&c.req, %s, %s_count);", n, n)
	case calls.Mechanism:
		if a.Message {
			e.p("\thsm_put_msg_mechanism(&c.req, %s);", n)
		} else {
			e.p("\thsm_put_mechanism(&c.req, %s);", n)
		}
	case calls.MsgParam, calls.MsgParamOut:
		out := 0
		if a.Kind == calls.MsgParamOut {
			out = 1
		}
		if a.Mech {
			e.p("\thsm_put_u64(&c.req, (uint64_t)%s->mechanism);", n)
			e.p("\thsm_put_msgparam(&c.req, &%s, %s->pParameter, %s->ulParameterLen, %s, %d);", msgVar(a), n, n, structMask(a), out)
			return
		}
		e.p("\thsm_put_msgparam(&c.req, &%s, %s, %s_len, %s, %d);", msgVar(a), n, n, structMask(a), out)
	case calls.OptOutBytes:
		e.p("\thsm_put_u8(&c.req, %s_len != NULL);", n)
		e.p("\tif (%s_len != NULL)", n)
		e.p("\t\thsm_put_outspec(&c.req, %s != NULL, *%s_len);", n, n)
	case calls.OutBytes:
		e.p("\thsm_put_outspec(&c.req, %s != NULL, *%s_len);", n, n)
	case calls.OutUlongs:
		e.p("\thsm_put_outspec(&c.req, %s != NULL, *%s_count);", n, n)
	case calls.OutHandles:
		e.p("\thsm_put_u64(&c.req, (uint64_t)%s_max);", n)
	case calls.OutFilled:
		e.p("\tif (%s_len > HSM_MAX_BYTES)", n)
		e.p("\t\thsm_fail(&c.req, CKR_ARGUMENTS_BAD); /* the reply could not carry it */")
		e.p("\thsm_put_u64(&c.req, (uint64_t)%s_len);", n)
	}
}

// genDecode reads an output from the reply into locals named o_<name>.
func genDecode(e *emitter, a calls.Arg) {
	n := a.Name
	switch a.Kind {
	case calls.OutUlong:
		e.p("\t\tCK_ULONG o_%s = hsm_get_ulong(&c.res);", n)
	case calls.OutBytes:
		e.p("\t\thsm_outbytes o_%s;", n)
		e.p("\t\thsm_get_outbytes(&c.res, &o_%s);", n)
	case calls.OutUlongs:
		e.p("\t\thsm_outulongs o_%s;", n)
		e.p("\t\thsm_get_outulongs(&c.res, &o_%s);", n)
	case calls.OutHandles:
		e.p("\t\thsm_outulongs o_%s;", n)
		e.p("\t\thsm_get_ulongs(&c.res, &o_%s);", n)
	case calls.AttrQuery:
		e.p("\t\thsm_answers o_%s;", n)
		e.p("\t\thsm_get_answers(&c.res, &o_%s, %s, %s_count, rv);", n, n, n)
	case calls.OutStruct:
		e.p("\t\t%s o_%s;", a.Struct, n)
		e.p("\t\thsm_dec_%s(&c.res, &o_%s);", a.Struct, n)
	case calls.MsgParamOut:
		e.p("\t\tint o_%s_ok = hsm_get_msgout(&c.res, &%s);", n, msgVar(a))
	case calls.OptOutBytes:
		e.p("\t\thsm_outbytes o_%s = {0, NULL, 0};", n)
		e.p("\t\tint o_%s_ok = hsm_get_u8(&c.res) == (%s_len != NULL);", n, n)
		e.p("\t\tif (%s_len != NULL)", n)
		e.p("\t\t\thsm_get_outbytes(&c.res, &o_%s);", n)
	case calls.OutFilled:
		e.p("\t\tuint32_t o_%s_n;", n)
		e.p("\t\tint o_%s_null;", n)
		e.p("\t\tconst uint8_t *o_%s = hsm_get_bytes(&c.res, &o_%s_n, &o_%s_null);", n, n, n)
	}
}

// outCheck is the condition under which a decoded output fits the caller.
func outCheck(a calls.Arg) string {
	n := a.Name
	switch a.Kind {
	case calls.OutBytes:
		return fmt.Sprintf("hsm_outbytes_ok(&o_%s, %s, *%s_len, rv)", n, n, n)
	case calls.OutUlongs:
		return fmt.Sprintf("hsm_outulongs_ok(&o_%s, %s, *%s_count, rv)", n, n, n)
	case calls.OutHandles:
		return fmt.Sprintf("hsm_outulongs_ok(&o_%s, %s, %s_max, rv)", n, n, n)
	case calls.OutFilled:
		return fmt.Sprintf("!o_%s_null && o_%s_n == %s_len", n, n, n)
	case calls.MsgParamOut:
		return fmt.Sprintf("o_%s_ok", n)
	case calls.OptOutBytes:
		return fmt.Sprintf("o_%s_ok && (%s_len == NULL || hsm_outbytes_ok(&o_%s, %s, *%s_len, rv))", n, n, n, n, n)
	}
	return ""
}

// genCommit writes a checked output to the caller.
func genCommit(e *emitter, a calls.Arg) {
	n := a.Name
	switch a.Kind {
	case calls.OutUlong:
		e.p("\t\t*%s = (%s)o_%s;", n, a.CType, n)
	case calls.OutBytes:
		e.p("\t\thsm_outbytes_commit(&o_%s, %s, %s_len);", n, n, n)
	case calls.OutUlongs, calls.OutHandles:
		e.p("\t\thsm_outulongs_commit(&o_%s, %s, %s_count);", n, n, n)
	case calls.AttrQuery:
		e.p("\t\trv = hsm_answers_commit(&o_%s, %s, %s_count, rv);", n, n, n)
	case calls.OutStruct:
		e.p("\t\t*%s = o_%s;", n, n)
	case calls.OutFilled:
		e.p("\t\tif (o_%s_n > 0)", n)
		e.p("\t\t\tmemcpy(%s, o_%s, o_%s_n);", n, n, n)
	case calls.MsgParamOut:
		e.p("\t\thsm_msgparam_commit(&%s);", msgVar(a))
	case calls.OptOutBytes:
		e.p("\t\tif (%s_len != NULL)", n)
		e.p("\t\t\thsm_outbytes_commit(&o_%s, %s, %s_len);", n, n, n)
	}
}
