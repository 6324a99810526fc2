//! The snapshot recipe: seed, synthetic size and the share of each bank kind (TOML).
//!
//! ```toml
//! format = 1          # recipe format version
//! seed = 1            # PRNG seed (see pob::prng)
//! size_mb = 64        # synthetic part in MiB; corpus banks come on top
//!
//! [[bank]]
//! kind = "elf_text"   # one of BankKind
//! weight = 30         # share of size_mb (integer)
//! ```
//! Unknown keys are rejected. A bank's length is `size * weight / sum(weights)` rounded down to
//! 4 KiB; the last bank takes the remainder, so the synthetic part is exactly `size_mb` MiB.

use serde::{Deserialize, Serialize};

/// The kinds of synthetic bank. The order in the recipe is the order in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankKind {
    /// x86-64 code: prologues, epilogues, common instruction sequences, padding.
    ElfText,
    /// .data/.rodata motifs: pointers, small integers, floats, jump tables.
    DataMotifs,
    /// PLT stubs, GOT entries, Elf64_Rela relocation records.
    PltGotReloc,
    /// Section names, common symbol and version strings.
    SectionStrings,
    /// Little-endian counting tables of u8/u16/u32/u64 with assorted strides.
    NumericTables,
    /// ASCII alphabets, digits, hex, base64, common message fragments.
    AsciiTables,
    /// Periodic stripes: random motifs of period 2..64 repeated.
    Stripes,
    /// De Bruijn tiles: every n-gram over small alphabets of common bytes.
    Debruijn,
    /// Runs of one byte value.
    ConstRuns,
    /// Pseudo-random bytes.
    PrandTail,
    /// A corpus bank: real files added with `--add` (not valid in a recipe).
    Corpus,
}

impl BankKind {
    pub fn name(self) -> &'static str {
        match self {
            BankKind::ElfText => "elf_text",
            BankKind::DataMotifs => "data_motifs",
            BankKind::PltGotReloc => "plt_got_reloc",
            BankKind::SectionStrings => "section_strings",
            BankKind::NumericTables => "numeric_tables",
            BankKind::AsciiTables => "ascii_tables",
            BankKind::Stripes => "stripes",
            BankKind::Debruijn => "debruijn",
            BankKind::ConstRuns => "const_runs",
            BankKind::PrandTail => "prand_tail",
            BankKind::Corpus => "corpus",
        }
    }
}

/// One synthetic bank of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankSpec {
    pub kind: BankKind,
    pub weight: u32,
}

/// A snapshot recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub format: u32,
    pub seed: u64,
    pub size_mb: u64,
    #[serde(rename = "bank")]
    pub banks: Vec<BankSpec>,
}

/// The recipe format this build reads.
pub const RECIPE_FORMAT: u32 = 1;
/// The largest synthetic size accepted (bounds generation time; corpus banks may add more).
pub const MAX_SIZE_MB: u64 = 3072;

/// The default recipe, embedded from config/snapshot.default.toml.
pub const DEFAULT_RECIPE_TOML: &str = include_str!("../../config/snapshot.default.toml");

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("recipe: {0}")]
    Invalid(String),
}

impl Recipe {
    pub fn default_recipe() -> Recipe {
        Recipe::parse(DEFAULT_RECIPE_TOML).expect("the embedded default recipe is valid")
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Recipe, RecipeError> {
        let r: Recipe = toml::from_str(text)?;
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), RecipeError> {
        let bad = |m: String| Err(RecipeError::Invalid(m));
        if self.format != RECIPE_FORMAT {
            return bad(format!(
                "format {} is not supported (this pfs reads format {RECIPE_FORMAT})",
                self.format
            ));
        }
        if self.size_mb == 0 || self.size_mb > MAX_SIZE_MB {
            return bad(format!(
                "size_mb must be 1..={MAX_SIZE_MB}, got {}",
                self.size_mb
            ));
        }
        if self.banks.is_empty() {
            return bad("at least one [[bank]] is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.banks {
            if b.kind == BankKind::Corpus {
                return bad(
                    "kind \"corpus\" cannot appear in a recipe: add files with --add".into(),
                );
            }
            if b.weight == 0 {
                return bad(format!("bank {} has weight 0", b.kind.name()));
            }
            if !seen.insert(b.kind) {
                return bad(format!("bank {} appears twice", b.kind.name()));
            }
        }
        Ok(())
    }

    /// The length of each synthetic bank, in recipe order; they add up to `size_mb` MiB.
    pub fn bank_lengths(&self) -> Vec<u64> {
        let total = self.size_mb << 20;
        let wsum: u64 = self.banks.iter().map(|b| b.weight as u64).sum();
        let mut out: Vec<u64> = self
            .banks
            .iter()
            .map(|b| (total as u128 * b.weight as u128 / wsum as u128) as u64 & !4095)
            .collect();
        let used: u64 = out.iter().sum();
        if let Some(last) = out.last_mut() {
            *last += total - used;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_recipe_parses_and_sizes_add_up() {
        let r = Recipe::default_recipe();
        let lens = r.bank_lengths();
        assert_eq!(lens.iter().sum::<u64>(), r.size_mb << 20);
        assert!(lens.iter().all(|l| *l > 0));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let t = "format = 1\nseed = 1\nsize_mb = 1\ncolour = 3\n[[bank]]\nkind = \"stripes\"\nweight = 1\n";
        let e = Recipe::parse(t).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let t = "format = 1\nseed = 1\nsize_mb = 1\n[[bank]]\nkind = \"stripes\"\nweight = 1\nshade = 2\n";
        let e = Recipe::parse(t).unwrap_err().to_string();
        assert!(e.contains("shade"), "{e}");
    }

    #[test]
    fn invalid_recipes_are_rejected() {
        for (t, what) in [
            (
                "format = 2\nseed = 1\nsize_mb = 1\n[[bank]]\nkind = \"stripes\"\nweight = 1\n",
                "format",
            ),
            (
                "format = 1\nseed = 1\nsize_mb = 0\n[[bank]]\nkind = \"stripes\"\nweight = 1\n",
                "size_mb",
            ),
            (
                "format = 1\nseed = 1\nsize_mb = 1\n[[bank]]\nkind = \"stripes\"\nweight = 0\n",
                "weight 0",
            ),
            (
                "format = 1\nseed = 1\nsize_mb = 1\n[[bank]]\nkind = \"corpus\"\nweight = 1\n",
                "corpus",
            ),
            (
                "format = 1\nseed = 1\nsize_mb = 1\n[[bank]]\nkind = \"nope\"\nweight = 1\n",
                "nope",
            ),
        ] {
            let e = Recipe::parse(t).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
