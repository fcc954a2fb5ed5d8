"""Word-level vocabularies now live in :mod:`mechkit.tasks._vocab`; these names stay importable here."""

from mechkit.tasks._vocab import (  # noqa: F401
    BOS as BOS,
    EOS as EOS,
    PAD as PAD,
    SPECIALS as SPECIALS,
    UNK as UNK,
    build_tokenizer as build_tokenizer,
    generator as generator,
    mix_hash as mix_hash,
    random_perm_rows as random_perm_rows,
    vocab_digest as vocab_digest,
)
