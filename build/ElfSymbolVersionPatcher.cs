// Makes TorchSharp's libLibTorchSharp.so load on hosts whose libstdc++ is older than the one it was linked
// against (Debian 12: GCC 12, GLIBCXX up to 3.4.30). The library demands GLIBCXX_3.4.32 for one marker symbol,
// std::ios_base_library_init(), that nothing calls. Marking that version requirement weak (VER_FLG_WEAK in its
// .gnu.version_r auxiliary entry) lets the dynamic loader accept its absence; nothing else is changed.
//
// This one file is compiled twice: by MSBuild's RoslynCodeTaskFactory for the build task (build/TorchSharpDebianFix.targets)
// (netstandard, hence the plain APIs) and into the test project (with TERN_NO_MSBUILD_TASK defined), so the tests exercise the code the build runs.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace Tern.Build
{
    /// <summary>What <see cref="ElfSymbolVersionPatcher.Patch"/> did to a file.</summary>
    public enum ElfPatchOutcome
    {
        /// <summary>The version requirement was found and marked weak.</summary>
        Patched,
        /// <summary>Every matching requirement was already weak: nothing written.</summary>
        AlreadyWeak,
        /// <summary>The file does not require the version: nothing written.</summary>
        NotRequired,
    }

    /// <summary>Marks an ELF64 shared library's requirement of a symbol version as weak.</summary>
    public static class ElfSymbolVersionPatcher
    {
        /// <summary>The version libLibTorchSharp.so 0.107 requires and Debian 12 lacks.</summary>
        public const string DefaultVersion = "GLIBCXX_3.4.32";
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;

        /// <summary>Marks every requirement of <paramref name="version"/> in <paramref name="path"/> weak, in place
        /// (written to a temporary file, then moved over the original).</summary>
        /// <exception cref="InvalidDataException">The file is not a well-formed little-endian ELF64 file.</exception>
        public static ElfPatchOutcome Patch(string path, string version = DefaultVersion)
        {
            byte[] image = File.ReadAllBytes(path);
            List<int> flagOffsets = FindRequirementFlags(image, version, path);
            if (flagOffsets.Count == 0) return ElfPatchOutcome.NotRequired;
            bool changed = false;
            foreach (int at in flagOffsets)
            {
                ushort flags = BitConverter.ToUInt16(image, at);
                if ((flags & VerFlgWeak) != 0) continue;
                BitConverter.GetBytes((ushort)(flags | VerFlgWeak)).CopyTo(image, at);
                changed = true;
            }
            if (!changed) return ElfPatchOutcome.AlreadyWeak;
            string temp = path + ".tern-patch.tmp";
            File.WriteAllBytes(temp, image);
            File.Copy(temp, path, true); // netstandard (MSBuild's task compiler) has no File.Move overwrite
            File.Delete(temp);
            return ElfPatchOutcome.Patched;
        }

        /// <summary>True when the requirement of <paramref name="version"/> in the file is present and weak.</summary>
        public static bool IsWeak(string path, string version = DefaultVersion)
        {
            byte[] image = File.ReadAllBytes(path);
            List<int> offsets = FindRequirementFlags(image, version, path);
            if (offsets.Count == 0) return false;
            foreach (int at in offsets)
                if ((BitConverter.ToUInt16(image, at) & VerFlgWeak) == 0) return false;
            return true;
        }

        /// <summary>True when the host's libstdc++ defines <paramref name="version"/>, in which case no patch is needed.
        /// Returns true on non-Linux hosts and when no libstdc++ is found (nothing to fix there).</summary>
        public static bool HostLibStdCxxHas(string version = DefaultVersion)
        {
            if (!System.Runtime.InteropServices.RuntimeInformation.IsOSPlatform(System.Runtime.InteropServices.OSPlatform.Linux)) return true;
            string[] candidates =
            {
                "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
                "/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            };
            byte[] needle = Encoding.ASCII.GetBytes(version + "\0");
            foreach (string c in candidates)
            {
                if (!File.Exists(c)) continue;
                return IndexOf(File.ReadAllBytes(c), needle) >= 0;
            }
            return true;
        }

        /// <summary>File offsets of the vna_flags fields of every auxiliary version-need entry naming <paramref name="version"/>.</summary>
        static List<int> FindRequirementFlags(byte[] f, string version, string path)
        {
            void Require(bool ok, string what)
            {
                if (!ok) throw new InvalidDataException($"{path}: not a well-formed ELF64 little-endian file ({what}).");
            }
            Require(f.Length >= 64 && f[0] == 0x7f && f[1] == (byte)'E' && f[2] == (byte)'L' && f[3] == (byte)'F', "magic");
            Require(f[4] == 2 && f[5] == 1, "class/endianness");
            ulong shoff = BitConverter.ToUInt64(f, 0x28);
            int shentsize = BitConverter.ToUInt16(f, 0x3A), shnum = BitConverter.ToUInt16(f, 0x3C);
            Require(shentsize >= 64 && Fits(shoff, (ulong)shentsize * (ulong)shnum, f.Length), "section header table");
            var result = new List<int>();
            for (int s = 0; s < shnum; s++)
            {
                int sh = checked((int)shoff + s * shentsize);
                if (BitConverter.ToUInt32(f, sh + 4) != ShtGnuVerneed) continue;
                ulong offset = BitConverter.ToUInt64(f, sh + 0x18), size = BitConverter.ToUInt64(f, sh + 0x20);
                uint link = BitConverter.ToUInt32(f, sh + 0x28), count = BitConverter.ToUInt32(f, sh + 0x2C);
                Require(Fits(offset, size, f.Length) && link < shnum, "verneed section");
                int strSh = checked((int)shoff + (int)link * shentsize);
                ulong strOff = BitConverter.ToUInt64(f, strSh + 0x18), strSize = BitConverter.ToUInt64(f, strSh + 0x20);
                Require(Fits(strOff, strSize, f.Length), "string table");
                ulong entry = offset;
                for (uint e = 0; e < count; e++)
                {
                    Require(entry + 16 <= offset + size, "verneed entry");
                    int at = (int)entry;
                    ushort auxCount = BitConverter.ToUInt16(f, at + 2);
                    ulong aux = entry + BitConverter.ToUInt32(f, at + 8);
                    for (int a = 0; a < auxCount; a++)
                    {
                        Require(aux + 16 <= offset + size, "vernaux entry");
                        int ax = (int)aux;
                        uint name = BitConverter.ToUInt32(f, ax + 8);
                        Require(name < strSize, "vernaux name");
                        if (ReadCString(f, (int)(strOff + name), (int)(strOff + strSize)) == version) result.Add(ax + 4);
                        uint next = BitConverter.ToUInt32(f, ax + 12);
                        if (next == 0) break;
                        aux += next;
                    }
                    uint nextEntry = BitConverter.ToUInt32(f, at + 12);
                    if (nextEntry == 0) break;
                    entry += nextEntry;
                }
            }
            return result;
        }

        /// <summary>True when [offset, offset + size) lies inside a file of <paramref name="length"/> bytes, without wrapping around.</summary>
        static bool Fits(ulong offset, ulong size, int length) => offset <= (ulong)length && size <= (ulong)length - offset;

        static string ReadCString(byte[] f, int start, int limit)
        {
            int end = start;
            while (end < limit && f[end] != 0) end++;
            return Encoding.ASCII.GetString(f, start, end - start);
        }

        static int IndexOf(byte[] haystack, byte[] needle)
        {
            for (int i = 0; i + needle.Length <= haystack.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }
    }

#if !TERN_NO_MSBUILD_TASK
    /// <summary>MSBuild task: patches every given libLibTorchSharp.so when the host's libstdc++ needs it.</summary>
    public class PatchLibTorchSharp : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        public override bool Execute()
        {
            if (ElfSymbolVersionPatcher.HostLibStdCxxHas())
            {
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low,
                    "libstdc++ here has " + ElfSymbolVersionPatcher.DefaultVersion + ": libLibTorchSharp.so left as it is.");
                return true;
            }
            foreach (var item in Files)
            {
                ElfPatchOutcome outcome = ElfSymbolVersionPatcher.Patch(item.ItemSpec);
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal, "TorchSharp Debian fix: " + item.ItemSpec + ": " + outcome);
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
