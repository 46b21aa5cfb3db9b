package main

import "hsmemu/cryptoki/calls"

// genLists writes the three function lists: CK_FUNCTION_LIST (version
// 2.40, the calls of Version 2) for C_GetFunctionList, and for
// C_GetInterface CK_FUNCTION_LIST_3_0 (Versions 2 and 3) and
// CK_FUNCTION_LIST_3_2 (every call). Designated initialisers let the
// compiler check each name against the header's structure and each
// function's type against the member's.
func genLists(e *emitter) error {
	e.p("#include \"p11gen.h\"")
	e.p("")
	e.p("CK_FUNCTION_LIST hsm_function_list = {")
	e.p("\t.version = {2, 40},")
	for _, c := range calls.Table {
		if c.Version == 2 {
			e.p("\t.%s = %s,", c.Name, c.Name)
		}
	}
	e.p("};")
	e.p("")
	e.p("CK_FUNCTION_LIST_3_0 hsm_function_list_3_0 = {")
	e.p("\t.version = {3, 0},")
	for _, c := range calls.Table {
		impl := c.Name
		if c.Name == "C_GetInfo" {
			impl = "hsm_GetInfo30" // reports cryptokiVersion 3.0
		}
		if c.Version <= 3 {
			e.p("\t.%s = %s,", c.Name, impl)
		}
	}
	e.p("};")
	e.p("")
	e.p("CK_FUNCTION_LIST_3_2 hsm_function_list_3_2 = {")
	e.p("\t.version = {3, 2},")
	for _, c := range calls.Table {
		impl := c.Name
		if c.Name == "C_GetInfo" {
			impl = "hsm_GetInfo32" // reports cryptokiVersion 3.2
		}
		e.p("\t.%s = %s,", c.Name, impl)
	}
	e.p("};")
	return nil
}
