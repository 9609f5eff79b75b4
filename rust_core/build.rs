//! Copies the Triton kernels from the top-level `kernels/` folder into
//! `$OUT_DIR/_kernels/`, from where maturin ships them as `vlmfast/_kernels/`
//! (see `[tool.maturin] include` in pyproject.toml). A bare top-level `kernels`
//! package would collide with an unrelated PyPI project of that name.
use std::{env, fs, io, path::PathBuf};

fn main() -> io::Result<()> {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("..")
        .join("kernels");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("_kernels");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    println!("cargo:rerun-if-changed={}", src.display());
    for entry in fs::read_dir(&src)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "py") {
            println!("cargo:rerun-if-changed={}", path.display());
            fs::copy(&path, out.join(path.file_name().expect("a file")))?;
        }
    }
    Ok(())
}
