using Tern.Checkpoints;

namespace Tern.Models;

/// <summary>Checks of a config's sizes, so an impossible shape is refused with the field's name before any tensor exists.</summary>
internal static class ModelShape
{
    public static void RequirePositive(HfConfig config, params (string Field, int Value)[] sizes)
    {
        foreach (var (field, value) in sizes)
            if (value <= 0) throw config.Error(field, $"must be a positive integer (found {value})");
    }

    public static void RequireDivisible(HfConfig config, string field, int value, string divisorField, int divisor)
    {
        if (value % divisor != 0) throw config.Error(field, $"({value}) must be a multiple of {divisorField} ({divisor})");
    }
}
