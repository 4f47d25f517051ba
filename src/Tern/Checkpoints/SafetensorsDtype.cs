using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>
/// The element types of the safetensors format, named exactly as they appear in a header's <c>dtype</c> field
/// (so <see cref="object.ToString"/> gives the header spelling).
/// </summary>
public enum SafetensorsDtype
{
    /// <summary>Boolean, one byte per element.</summary>
    BOOL,
    /// <summary>Unsigned 8-bit integer.</summary>
    U8,
    /// <summary>Signed 8-bit integer.</summary>
    I8,
    /// <summary>Signed 16-bit integer.</summary>
    I16,
    /// <summary>Unsigned 16-bit integer (no TorchSharp tensor type).</summary>
    U16,
    /// <summary>IEEE half precision.</summary>
    F16,
    /// <summary>bfloat16.</summary>
    BF16,
    /// <summary>Signed 32-bit integer.</summary>
    I32,
    /// <summary>Unsigned 32-bit integer (no TorchSharp tensor type).</summary>
    U32,
    /// <summary>IEEE single precision.</summary>
    F32,
    /// <summary>IEEE double precision.</summary>
    F64,
    /// <summary>Signed 64-bit integer.</summary>
    I64,
    /// <summary>Unsigned 64-bit integer (no TorchSharp tensor type).</summary>
    U64,
    /// <summary>8-bit float, 4 exponent and 3 mantissa bits (no TorchSharp tensor type).</summary>
    F8_E4M3,
    /// <summary>8-bit float, 5 exponent and 2 mantissa bits (no TorchSharp tensor type).</summary>
    F8_E5M2,
}

/// <summary>Sizes, names and TorchSharp equivalents of <see cref="SafetensorsDtype"/> values.</summary>
public static class SafetensorsDtypes
{
    /// <summary>All dtypes the format defines, in declaration order.</summary>
    public static IReadOnlyList<SafetensorsDtype> All { get; } = Enum.GetValues<SafetensorsDtype>();

    /// <summary>The dtypes that load into a TorchSharp tensor (<see cref="TryGetScalarType"/> succeeds).</summary>
    public static IReadOnlyList<SafetensorsDtype> Loadable { get; } = All.Where(d => d.TryGetScalarType(out _)).ToArray();

    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafetensorsDtype dtype) => dtype switch
    {
        SafetensorsDtype.BOOL or SafetensorsDtype.U8 or SafetensorsDtype.I8 or SafetensorsDtype.F8_E4M3 or SafetensorsDtype.F8_E5M2 => 1,
        SafetensorsDtype.I16 or SafetensorsDtype.U16 or SafetensorsDtype.F16 or SafetensorsDtype.BF16 => 2,
        SafetensorsDtype.I32 or SafetensorsDtype.U32 or SafetensorsDtype.F32 => 4,
        SafetensorsDtype.I64 or SafetensorsDtype.U64 or SafetensorsDtype.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>
    /// Parses a header's <c>dtype</c> string. Exact, case-sensitive match of the spec's names only
    /// (unlike <see cref="Enum.TryParse{TEnum}(string, out TEnum)"/>, numbers and other casings are refused).
    /// </summary>
    public static bool TryParse(string? text, out SafetensorsDtype dtype)
    {
        switch (text)
        {
            case "BOOL": dtype = SafetensorsDtype.BOOL; return true;
            case "U8": dtype = SafetensorsDtype.U8; return true;
            case "I8": dtype = SafetensorsDtype.I8; return true;
            case "I16": dtype = SafetensorsDtype.I16; return true;
            case "U16": dtype = SafetensorsDtype.U16; return true;
            case "F16": dtype = SafetensorsDtype.F16; return true;
            case "BF16": dtype = SafetensorsDtype.BF16; return true;
            case "I32": dtype = SafetensorsDtype.I32; return true;
            case "U32": dtype = SafetensorsDtype.U32; return true;
            case "F32": dtype = SafetensorsDtype.F32; return true;
            case "F64": dtype = SafetensorsDtype.F64; return true;
            case "I64": dtype = SafetensorsDtype.I64; return true;
            case "U64": dtype = SafetensorsDtype.U64; return true;
            case "F8_E4M3": dtype = SafetensorsDtype.F8_E4M3; return true;
            case "F8_E5M2": dtype = SafetensorsDtype.F8_E5M2; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>
    /// The TorchSharp element type that holds <paramref name="dtype"/> bit for bit. False for U16, U32, U64 and
    /// the FP8 types, which TorchSharp 0.107 has no <see cref="ScalarType"/> for.
    /// </summary>
    public static bool TryGetScalarType(this SafetensorsDtype dtype, out ScalarType scalarType)
    {
        ScalarType? st = dtype switch
        {
            SafetensorsDtype.BOOL => ScalarType.Bool,
            SafetensorsDtype.U8 => ScalarType.Byte,
            SafetensorsDtype.I8 => ScalarType.Int8,
            SafetensorsDtype.I16 => ScalarType.Int16,
            SafetensorsDtype.F16 => ScalarType.Float16,
            SafetensorsDtype.BF16 => ScalarType.BFloat16,
            SafetensorsDtype.I32 => ScalarType.Int32,
            SafetensorsDtype.F32 => ScalarType.Float32,
            SafetensorsDtype.F64 => ScalarType.Float64,
            SafetensorsDtype.I64 => ScalarType.Int64,
            _ => null,
        };
        scalarType = st.GetValueOrDefault();
        return st.HasValue;
    }

    /// <summary>The safetensors dtype that stores a TorchSharp element type.</summary>
    /// <exception cref="ArgumentException">Complex and quantized types, which safetensors cannot store.</exception>
    public static SafetensorsDtype FromScalarType(ScalarType scalarType) => scalarType switch
    {
        ScalarType.Bool => SafetensorsDtype.BOOL,
        ScalarType.Byte => SafetensorsDtype.U8,
        ScalarType.Int8 => SafetensorsDtype.I8,
        ScalarType.Int16 => SafetensorsDtype.I16,
        ScalarType.Float16 => SafetensorsDtype.F16,
        ScalarType.BFloat16 => SafetensorsDtype.BF16,
        ScalarType.Int32 => SafetensorsDtype.I32,
        ScalarType.Float32 => SafetensorsDtype.F32,
        ScalarType.Float64 => SafetensorsDtype.F64,
        ScalarType.Int64 => SafetensorsDtype.I64,
        _ => throw new ArgumentException($"Tensors of type {scalarType} cannot be stored in a safetensors file.", nameof(scalarType)),
    };
}
