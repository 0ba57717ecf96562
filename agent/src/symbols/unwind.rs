//! framehop unwind tables of every loaded module, shared by the signal-safe
//! unwinding of [`crate::unwind`] (the CPU sampler and the stuck-worker
//! capture, which unwind a thread from a signal handler) and the heap
//! profiler's backtrace hook (which unwinds its own thread inside `malloc`).
//! None of them may allocate while unwinding.

use framehop::{ExplicitModuleSectionInfo, MustNotAllocateDuringUnwind, Unwinder, UnwinderNative};

use super::modules::LoadedModule;

/// An unwinder for this process's architecture that never allocates while
/// unwinding.
pub(crate) type NativeUnwinder = UnwinderNative<Vec<u8>, MustNotAllocateDuringUnwind>;

/// An unwinder over `modules` (listed with their unwind tables). A module
/// without `.eh_frame_hdr` is still added, so that framehop falls back to
/// frame pointers inside it.
pub(crate) fn build_unwinder(modules: &[LoadedModule]) -> NativeUnwinder {
    let mut unwinder = NativeUnwinder::new();
    for module in modules {
        let Some(code) = module.code_range() else {
            continue;
        };
        let text_svma = code.start.wrapping_sub(module.base)..code.end.wrapping_sub(module.base);
        let info = match &module.unwind {
            Some(unwind) => ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: Some(text_svma),
                eh_frame_svma: Some(unwind.eh_frame_svma.clone()),
                eh_frame: Some(eh_frame_for_framehop(&unwind.eh_frame)),
                eh_frame_hdr_svma: Some(unwind.eh_frame_hdr_svma.clone()),
                eh_frame_hdr: Some(unwind.eh_frame_hdr.clone()),
                ..Default::default()
            },
            None => ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: Some(text_svma),
                ..Default::default()
            },
        };
        unwinder.add_module(framehop::Module::new(
            module.path.clone(),
            code,
            module.base,
            info,
        ));
    }
    unwinder
}

/// A module's `.eh_frame` as framehop gets it: on aarch64, with the
/// pointer-authentication sign-state opcodes it cannot parse made no-ops
/// (see [`super::cfi`]; return addresses are stripped with a mask instead).
fn eh_frame_for_framehop(eh_frame: &[u8]) -> Vec<u8> {
    #[cfg_attr(not(target_arch = "aarch64"), allow(unused_mut))]
    let mut copy = eh_frame.to_vec();
    #[cfg(target_arch = "aarch64")]
    super::cfi::neutralize_ra_state(&mut copy);
    copy
}

/// Bytes of unwind tables `modules` hold.
pub(crate) fn unwind_table_bytes(modules: &[LoadedModule]) -> usize {
    modules
        .iter()
        .filter_map(|m| m.unwind.as_ref())
        .map(|u| u.eh_frame.len() + u.eh_frame_hdr.len())
        .sum()
}
