package main

import (
	"fmt"
	"strings"

	"hsmemu/cryptoki/calls"
)

// genArgCases writes, for the module's C tests, hsm_argcases(f, phase):
// every forwarded call through the 3.0 function list, once with valid
// arguments and once per argument the stub must refuse.
//
//	phase 0, before C_Initialize: all answer CKR_CRYPTOKI_NOT_INITIALIZED.
//	phase 1, initialised with no daemon: the valid call gives the call's
//	offline answer, every bad one CKR_ARGUMENTS_BAD.
//
// The test program defines the fixtures (t_*) and argcase_expect.
func genArgCases(e *emitter) error {
	e.p("#include \"test.h\"")
	e.p("")
	e.p("void hsm_argcases(CK_FUNCTION_LIST_3_2 *f, int phase)")
	e.p("{")
	e.p("\tCK_RV rv;")
	for _, c := range forwarded() {
		off, err := offlineKind(c)
		if err != nil {
			return err
		}
		want := map[int]string{
			offSession:  "CKR_SESSION_HANDLE_INVALID",
			offSlot:     "CKR_TOKEN_NOT_PRESENT",
			offSlotList: "CKR_OK",
			offSlotInfo: "CKR_OK",
			offWait:     "CKR_NO_EVENT",
		}[off]
		e.p("")
		e.p("\t/* %s */", c.Name)
		emitCase(e, c, -1, "valid", fmt.Sprintf("phase ? %s : CKR_CRYPTOKI_NOT_INITIALIZED", want), "")
		if off == offSlot || off == offSlotInfo {
			emitCase(e, c, -1, "slot 7", "phase ? CKR_SLOT_ID_INVALID : CKR_CRYPTOKI_NOT_INITIALIZED", "7")
		}
		for i, a := range c.Args {
			bad := "phase ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED"
			if r := calls.RoleOf(c); a.Kind == calls.Mechanism && (r.Starts != 0 || r.VerifySignature == calls.SignatureStarts) {
				// An Init with no mechanism ends its operation, through
				// C_SessionCancel: with no daemon, no session is valid.
				bad = "phase ? CKR_SESSION_HANDLE_INVALID : CKR_CRYPTOKI_NOT_INITIALIZED"
			}
			for v := range badVariants(a) {
				emitCase(e, c, i, fmt.Sprintf("bad %s #%d", a.Name, v), bad, fmt.Sprint(v))
			}
		}
	}
	e.p("}")
	return nil
}

// badVariants returns how many invalid forms an argument has.
func badVariants(a calls.Arg) int {
	switch a.Kind {
	case calls.Bytes, calls.Label, calls.Template, calls.AttrQuery, calls.Mechanism,
		calls.OutUlong, calls.OutBytes, calls.OutUlongs, calls.OutStruct,
		calls.Reserved, calls.OutFilled, calls.MsgParam, calls.MsgParamOut:
		return 1
	case calls.OutHandles:
		return 2
	}
	return 0
}

// emitCase writes one call. bad is the index of the argument to spoil (-1
// for none) and variant says how; for a valid case, variant may override
// the slot id.
func emitCase(e *emitter, c *calls.Call, bad int, what, want, variant string) {
	var args []string
	for i, a := range c.Args {
		args = append(args, argValues(c, a, i == bad, variant, bad < 0)...)
	}
	e.p("\t{")
	for _, a := range c.Args {
		if a.Kind == calls.OutStruct {
			e.p("\t\t%s s_%s;", a.Struct, a.Name)
			e.p("\t\t(void)s_%s;", a.Name)
		}
	}
	e.p("\t\tt_reset();")
	e.p("\t\trv = f->%s(%s);", c.Name, strings.Join(args, ", "))
	e.p("\t\targcase_expect(rv, %s, \"%s: %s\");", want, c.Name, what)
	e.p("\t}")
}

// argValues returns the C expressions for one argument.
func argValues(c *calls.Call, a calls.Arg, spoil bool, variant string, valid bool) []string {
	n := a.Name
	switch a.Kind {
	case calls.Ulong:
		switch {
		case a.CType == "CK_SLOT_ID" && valid && variant != "":
			return []string{variant}
		case a.CType == "CK_SLOT_ID":
			return []string{"0"}
		case c.Name == "C_WaitForSlotEvent" && n == "flags":
			return []string{"CKF_DONT_BLOCK"}
		case c.Name == "C_OpenSession" && n == "flags":
			return []string{"CKF_SERIAL_SESSION"}
		}
		return []string{"1"}
	case calls.Byte:
		return []string{"CK_FALSE"}
	case calls.Ignored:
		return []string{"NULL"}
	case calls.Reserved:
		if spoil {
			return []string{"t_bytes"}
		}
		return []string{"NULL"}
	case calls.Bytes:
		if spoil {
			return []string{"NULL", "4"}
		}
		return []string{"t_bytes", "4"}
	case calls.Label:
		if spoil {
			return []string{"NULL"}
		}
		return []string{"t_label"}
	case calls.Template, calls.AttrQuery:
		if spoil {
			return []string{"NULL", "1"}
		}
		return []string{"t_template", "1"}
	case calls.Mechanism:
		if spoil {
			return []string{"NULL"}
		}
		return []string{"&t_mechanism"}
	case calls.OutUlong:
		if spoil {
			return []string{"NULL"}
		}
		return []string{fmt.Sprintf("(%s *)&t_ulong", a.CType)}
	case calls.OutBytes:
		if spoil {
			return []string{"t_out", "NULL"}
		}
		return []string{"t_out", "&t_out_len"}
	case calls.OutUlongs:
		if spoil {
			return []string{"t_list", "NULL"}
		}
		return []string{"t_list", "&t_list_count"}
	case calls.OutHandles:
		switch {
		case spoil && variant == "0":
			return []string{"NULL", "4", "&t_list_count"}
		case spoil:
			return []string{"t_list", "4", "NULL"}
		}
		return []string{"t_list", "4", "&t_list_count"}
	case calls.OutStruct:
		if spoil {
			return []string{"NULL"}
		}
		return []string{"&s_" + n}
	case calls.OutFilled:
		if spoil {
			return []string{"NULL", "16"}
		}
		return []string{"t_out", "16"}
	case calls.MsgParam, calls.MsgParamOut:
		if a.Mech {
			if spoil {
				return []string{"NULL"}
			}
			return []string{"&t_mechanism"}
		}
		if spoil {
			return []string{"NULL", "4"}
		}
		return []string{"NULL", "0"}
	case calls.OptOutBytes:
		return []string{"t_out", "&t_out_len"}
	}
	panic(fmt.Sprintf("%s: kind %d", n, a.Kind))
}
