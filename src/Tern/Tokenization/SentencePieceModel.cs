using System.Text;

namespace Tern.Tokenization;

/// <summary>
/// The parts of a SentencePiece <c>tokenizer.model</c> (a <c>ModelProto</c> protobuf) Tern needs: the pieces with their
/// scores and types, the model type, byte fallback, the special piece ids and <c>add_dummy_prefix</c>. Read with a
/// minimal protobuf wire-format reader, so no generated code or protobuf package is involved.
/// </summary>
internal sealed class SentencePieceModel
{
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    public enum ModelKind { Unigram = 1, Bpe = 2, Word = 3, Char = 4 }

    public List<(string Piece, float Score, PieceType Type)> Pieces { get; } = [];
    public ModelKind Kind { get; private set; } = ModelKind.Unigram;
    public bool ByteFallback { get; private set; }
    public int UnkId { get; private set; }
    public int BosId { get; private set; } = 1;
    public int EosId { get; private set; } = 2;
    public int PadId { get; private set; } = -1;
    public bool AddDummyPrefix { get; private set; } = true;
    public string NormalizerName { get; private set; } = "";

    public static SentencePieceModel Read(string path)
    {
        byte[] data = File.ReadAllBytes(path);
        var model = new SentencePieceModel();
        try
        {
            var r = new ProtoReader(data, 0, data.Length);
            while (r.Next(out int field, out int wire))
            {
                switch (field)
                {
                    case 1 when wire == 2: model.ReadPiece(r.Sub()); break;
                    case 2 when wire == 2: model.ReadTrainerSpec(r.Sub()); break;
                    case 3 when wire == 2: model.ReadNormalizerSpec(r.Sub()); break;
                    default: r.Skip(wire); break;
                }
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException or InvalidDataException)
        {
            throw new TokenizerException($"{path} is not a valid SentencePiece model file: {e.Message}", e);
        }
        if (model.Pieces.Count == 0) throw new TokenizerException($"{path} holds no SentencePiece pieces.");
        return model;
    }

    private void ReadPiece(ProtoReader r)
    {
        string piece = "";
        float score = 0;
        var type = PieceType.Normal;
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) piece = r.String();
            else if (field == 2 && wire == 5) score = r.Float();
            else if (field == 3 && wire == 0) type = (PieceType)r.Varint();
            else r.Skip(wire);
        }
        Pieces.Add((piece, score, type));
    }

    private void ReadTrainerSpec(ProtoReader r)
    {
        while (r.Next(out int field, out int wire))
        {
            if (wire != 0) { r.Skip(wire); continue; }
            long v = r.Varint();
            switch (field)
            {
                case 3: Kind = (ModelKind)v; break;
                case 35: ByteFallback = v != 0; break;
                case 40: UnkId = (int)v; break;
                case 41: BosId = (int)v; break;
                case 42: EosId = (int)v; break;
                case 43: PadId = (int)v; break;
            }
        }
    }

    private void ReadNormalizerSpec(ProtoReader r)
    {
        while (r.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) NormalizerName = r.String();
            else if (field == 3 && wire == 0) AddDummyPrefix = r.Varint() != 0;
            else r.Skip(wire);
        }
    }

    private sealed class ProtoReader(byte[] data, int pos, int end)
    {
        private int _pos = pos;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_pos >= end) return false;
            long key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public long Varint()
        {
            long result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= end) throw new InvalidDataException("truncated varint");
                byte b = data[_pos++];
                result |= (long)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return result;
            }
            throw new InvalidDataException("malformed varint");
        }

        public ProtoReader Sub()
        {
            int length = checked((int)Varint());
            if (length < 0 || _pos + length > end) throw new InvalidDataException("length-delimited field overruns the message");
            var sub = new ProtoReader(data, _pos, _pos + length);
            _pos += length;
            return sub;
        }

        public string String()
        {
            int length = checked((int)Varint());
            if (length < 0 || _pos + length > end) throw new InvalidDataException("string overruns the message");
            string s = Encoding.UTF8.GetString(data, _pos, length);
            _pos += length;
            return s;
        }

        public float Float()
        {
            if (_pos + 4 > end) throw new InvalidDataException("truncated float");
            float f = BitConverter.ToSingle(data, _pos);
            _pos += 4;
            return f;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _pos += 8; break;
                case 2: Sub(); break;
                case 5: _pos += 4; break;
                default: throw new InvalidDataException($"unsupported protobuf wire type {wire}");
            }
            if (_pos > end) throw new InvalidDataException("field overruns the message");
        }
    }

    /// <summary>
    /// The merge list HF's converter derives from the pieces (<c>generate_merges</c> with scores): every split of a piece
    /// into two pieces of the vocabulary, ordered by the piece's score (high first), then by longer left part, then by
    /// longer right part; ties keep vocabulary order.
    /// </summary>
    public List<(string Left, string Right)> GenerateMerges(Dictionary<string, int> vocab)
    {
        var merges = new List<(string Left, string Right, float Score, int LeftLength, int RightLength, int Order)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var local = new List<(string Left, string Right)>();
        foreach (var (piece, score, type) in Pieces)
        {
            // dict(vocab_scores) keeps one entry per piece; control/unknown/byte pieces are never produced by merging text.
            if (!seen.Add(piece) || type is PieceType.Control or PieceType.Unknown or PieceType.Byte) continue;
            local.Clear();
            int[] boundaries = RuneBoundaries(piece);
            for (int k = 1; k < boundaries.Length - 1; k++)
            {
                string left = piece[..boundaries[k]], right = piece[boundaries[k]..];
                if (vocab.ContainsKey(left) && vocab.ContainsKey(right)) local.Add((left, right));
            }
            local.Sort((x, y) =>
            {
                int c = vocab[x.Left].CompareTo(vocab[y.Left]);
                return c != 0 ? c : vocab[x.Right].CompareTo(vocab[y.Right]);
            });
            foreach (var (left, right) in local)
                merges.Add((left, right, score, RuneCount(left), RuneCount(right), merges.Count));
        }
        merges.Sort((x, y) =>
        {
            int c = y.Score.CompareTo(x.Score);
            if (c != 0) return c;
            c = y.LeftLength.CompareTo(x.LeftLength);
            if (c != 0) return c;
            c = y.RightLength.CompareTo(x.RightLength);
            return c != 0 ? c : x.Order.CompareTo(y.Order);
        });
        return merges.Select(m => (m.Left, m.Right)).ToList();
    }

    private static int[] RuneBoundaries(string s)
    {
        var list = new List<int> { 0 };
        int i = 0;
        foreach (Rune r in s.EnumerateRunes())
        {
            i += r.Utf16SequenceLength;
            list.Add(i);
        }
        return list.ToArray();
    }

    private static int RuneCount(string s)
    {
        int n = 0;
        foreach (Rune _ in s.EnumerateRunes()) n++;
        return n;
    }
}
