"""``cmpf doctor``'s CPU rows: the vector / matrix units that decide the int8 and bf16 CPU paths."""

from cmpf.doctor import cpu_rows

XEON = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu sse avx2 avx512f "
        "avx512_vnni avx512_bf16 amx_bf16 amx_int8\n")
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"


def test_amx_xeon_has_vnni_and_bf16():
    rows = dict(cpu_rows(XEON))
    assert rows["cpu"] == "Intel(R) Xeon(R) Platinum 8481C"
    assert rows["cpu features"].split(", ") == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX-BF16",
                                                "AMX-INT8"]
    assert rows["cpu int8"].startswith("VNNI") and rows["cpu bf16"].startswith("bf16 kernels")


def test_avx2_only_cpu_says_what_is_refused():
    rows = dict(cpu_rows(EPYC))
    assert rows["cpu features"] == "AVX2"
    assert rows["cpu int8"].startswith("no VNNI") and "refused" in rows["cpu bf16"]


def test_without_cpuinfo_flags_it_says_unknown():
    assert dict(cpu_rows(""))["cpu features"].startswith("unknown")


def test_cpu_info_reads_the_units_that_decide_int8_and_bf16():
    from cmpf.cpu import cpu_info

    xeon, epyc, unknown = cpu_info(XEON), cpu_info(EPYC), cpu_info("")
    assert (xeon.int8_dot_products, xeon.bf16_units) == (True, True)
    assert (epyc.int8_dot_products, epyc.bf16_units, epyc.features) == (False, False, ["AVX2"])
    assert unknown.flags is None and unknown.int8_dot_products is None  # unknown: nothing is claimed


def test_a_cli_warning_is_one_line_and_debug_says_where(monkeypatch, capsys):
    import sys
    import warnings

    import cmpf.doctor
    from cmpf.cli import main

    def warn_and_report():
        warnings.warn("something to know\n  across lines", UserWarning)

    monkeypatch.setattr(cmpf.doctor, "print_report", warn_and_report)
    before = warnings.formatwarning
    for args, expected in ((["doctor"], ["warning: something to know across lines"]),
                           (["--debug", "doctor"], None)):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(m, c, f, n, line))
            assert main(args) == 0
        err = capsys.readouterr().err.splitlines()
        if expected:
            assert err == expected
        else:
            assert "UserWarning" in err[0] and "test_doctor.py" in err[0]  # --debug: the usual form, with its place
    assert warnings.formatwarning is before  # restored: the CLI's format does not leak into library callers
