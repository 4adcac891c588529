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
