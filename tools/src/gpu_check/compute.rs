//! Running compute shaders on a [`Gles`] context: compiling one, and a
//! dispatch with a uniform block of parameters and a storage buffer read
//! back; the page checksum pass of `shaders/page_checksum.comp` (issue 8).

use glow::HasContext;

use super::egl::{step, trace};
use super::{Gles, GlesError};

impl Gles {
    /// Runs the page checksum shader over the first `rows` rows of `tex`
    /// (`words` texels each): one FNV-1a sum per row.
    pub fn page_checksums(&self, tex: glow::Texture, rows: u32, words: u32) -> Result<Vec<u32>, GlesError> {
        self.current()?;
        let gl = &self.gl;
        let program = self.compute_program(super::PAGE_CHECKSUM_SHADER, "page_checksum.comp")?;
        // SAFETY: a current context; every object is created and bound here.
        let out = unsafe {
            gl.use_program(Some(program));
            gl.bind_image_texture(0, Some(tex), 0, false, 0, glow::READ_ONLY, glow::RGBA8UI);
            self.dispatch(
                &[rows, words, 0, 0],
                rows as usize * 4,
                rows.div_ceil(64),
                "page_checksum.comp",
            )
        };
        // SAFETY: our program, no longer needed.
        unsafe { gl.delete_program(program) };
        out
    }

    /// Compiles and links the compute shader `src` (`name` in errors).
    pub(super) fn compute_program(&self, src: &str, name: &'static str) -> Result<glow::Program, GlesError> {
        let gl = &self.gl;
        // SAFETY: a current context (the callers made it so); the shader is
        // deleted once linked (or not).
        unsafe {
            let shader = gl
                .create_shader(glow::COMPUTE_SHADER)
                .map_err(|e| step("glCreateShader(COMPUTE)", e))?;
            gl.shader_source(shader, src);
            gl.compile_shader(shader);
            if !gl.get_shader_compile_status(shader) {
                let log = gl.get_shader_info_log(shader);
                gl.delete_shader(shader);
                return Err(step("compiling a compute shader", format!("{name}: {log}")));
            }
            let program = gl.create_program().map_err(|e| step("glCreateProgram", e))?;
            gl.attach_shader(program, shader);
            gl.link_program(program);
            gl.delete_shader(shader);
            if !gl.get_program_link_status(program) {
                let log = gl.get_program_info_log(program);
                gl.delete_program(program);
                return Err(step("linking a compute shader", format!("{name}: {log}")));
            }
            Ok(program)
        }
    }

    /// Runs the current compute program over `groups` work groups with
    /// `params` (u32s) in the uniform block at binding 2 and a zeroed
    /// storage buffer of `out_bytes` at binding 1, and returns that buffer
    /// as native-endian u32s.
    ///
    /// # Safety
    ///
    /// This context is current, a compute program is in use, and its other
    /// inputs are bound.
    pub(super) unsafe fn dispatch(
        &self,
        params: &[u32],
        out_bytes: usize,
        groups: u32,
        name: &'static str,
    ) -> Result<Vec<u32>, GlesError> {
        let gl = &self.gl;
        let p: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ubo = gl.create_buffer().map_err(|e| step("glGenBuffers", e))?;
        gl.bind_buffer(glow::UNIFORM_BUFFER, Some(ubo));
        gl.buffer_data_u8_slice(glow::UNIFORM_BUFFER, &p, glow::STATIC_DRAW);
        gl.bind_buffer_base(glow::UNIFORM_BUFFER, 2, Some(ubo));
        let ssbo = match gl.create_buffer() {
            Ok(b) => b,
            Err(e) => {
                gl.delete_buffer(ubo);
                return Err(step("glGenBuffers", e));
            }
        };
        let out = (|| {
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(ssbo));
            gl.buffer_data_u8_slice(glow::SHADER_STORAGE_BUFFER, &vec![0u8; out_bytes], glow::DYNAMIC_READ);
            gl.bind_buffer_base(glow::SHADER_STORAGE_BUFFER, 1, Some(ssbo));
            self.gl_ok("binding the shader's inputs")?;
            trace(&format!("dispatching {name}"));
            gl.dispatch_compute(groups, 1, 1);
            gl.memory_barrier(glow::BUFFER_UPDATE_BARRIER_BIT | glow::SHADER_STORAGE_BARRIER_BIT);
            trace("dispatch done");
            // GLES has no glGetBufferSubData: map the buffer.
            let ptr = gl.map_buffer_range(glow::SHADER_STORAGE_BUFFER, 0, out_bytes as i32, glow::MAP_READ_BIT);
            if ptr.is_null() {
                return Err(step("glMapBufferRange", format!("GL error {:#x}", gl.get_error())));
            }
            // The mapping need not be 4-byte aligned: read bytes.
            let out: Vec<u32> = std::slice::from_raw_parts(ptr as *const u8, out_bytes)
                .chunks_exact(4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            gl.unmap_buffer(glow::SHADER_STORAGE_BUFFER);
            Ok(out)
        })();
        gl.delete_buffer(ssbo);
        gl.delete_buffer(ubo);
        let out = out?;
        self.gl_ok(name).map(|()| out)
    }
}
