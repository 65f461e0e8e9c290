//! A 16550A UART, polled: the classic serial console, one exit per byte.
//!
//! Registers (offset from the base, COM1 = `0x3F8`):
//!
//! | offset | read | write |
//! | --- | --- | --- |
//! | 0 | RBR (receive buffer); DLL when LCR.DLAB | THR (transmit); DLL when LCR.DLAB |
//! | 1 | IER; DLM when LCR.DLAB | IER; DLM when LCR.DLAB |
//! | 2 | IIR | FCR |
//! | 3 | LCR | LCR |
//! | 4 | MCR | MCR |
//! | 5 | LSR | (ignored) |
//! | 6 | MSR | (ignored) |
//! | 7 | SCR | SCR |
//!
//! Output is immediate: each byte written to THR goes to the sink at once (and is flushed), so
//! LSR always reports THRE | TEMT. Input comes from a queue that other threads fill through a
//! [`UartInput`] handle; nothing feeds it yet, so for now the guest only ever reads an empty
//! receiver (LSR.DR clear). In loopback mode (MCR bit 4) THR feeds the receiver and MSR mirrors
//! MCR, as the 8250 probe in Linux expects; otherwise MSR reports DCD | DSR | CTS.
//!
//! No interrupt is delivered, but IER and IIR stay consistent: IIR names the highest-priority
//! condition the guest enabled in IER (received data, then THR empty) or reads `0x01` (no
//! interrupt pending), with bits 7:6 set while the FIFOs are enabled. Reading IIR when it
//! reports "THR empty" clears that condition until the next THR write, as on the real chip.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use super::PortDevice;

/// COM1's base port.
pub const COM1: u16 = 0x3f8;
/// Bytes the receive queue holds at most; further input is dropped.
const INPUT_CAPACITY: usize = 4096;

const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO: u8 = 0xc0;
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

/// The UART's receive queue, shared with whatever feeds it (e.g. a stdin reader thread).
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct UartInput {
    queue: Arc<Mutex<VecDeque<u8>>>,
}

impl UartInput {
    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        // Nothing panics while holding the lock; do not turn poison into a panic anyway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues bytes for the guest to read; returns how many fit (the queue holds at most 4096
    /// bytes, the rest is dropped).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut q = self.lock();
        let n = bytes.len().min(INPUT_CAPACITY.saturating_sub(q.len()));
        q.extend(&bytes[..n]);
        n
    }
}

/// A 16550A UART with an output sink and an input queue.
pub struct Uart16550 {
    base: u16,
    sink: Box<dyn Write + Send>,
    input: UartInput,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    /// The "THR empty" interrupt condition: set by a THR write (and by enabling it in IER),
    /// cleared by reading IIR while it is the reported one.
    thre_pending: bool,
    /// Bytes the sink refused (write errors are not the guest's business).
    dropped: u64,
}

impl Uart16550 {
    /// A UART at COM1 (`0x3F8..=0x3FF`) whose output goes to `sink` (the domain's console).
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self::with_base(COM1, sink)
    }

    /// A UART at `base..=base + 7` (COM2 is `0x2F8`). `base` must leave room for 8 ports;
    /// ports past `0xFFFF` are simply not claimed.
    pub fn with_base(base: u16, sink: Box<dyn Write + Send>) -> Self {
        Self {
            base,
            sink,
            input: UartInput::default(),
            ier: 0,
            lcr: 0x03, // 8N1
            mcr: 0,
            scr: 0,
            dll: 0x01, // 115200 baud
            dlm: 0,
            fifo_enabled: false,
            thre_pending: false,
            dropped: 0,
        }
    }

    /// The handle through which input reaches the guest.
    pub fn input(&self) -> UartInput {
        self.input.clone()
    }

    /// Bytes lost because the sink failed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.input.push(&[byte]);
        } else if self.sink.write_all(&[byte]).is_err() || self.sink.flush().is_err() {
            self.dropped += 1;
        }
        // The byte left at once: THR is empty again.
        self.thre_pending = true;
    }

    fn iir(&self) -> u8 {
        let id = if self.ier & IER_RDA != 0 && !self.input.lock().is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else {
            IIR_NONE
        };
        id | if self.fifo_enabled { IIR_FIFO } else { 0 }
    }

    fn msr(&self) -> u8 {
        if self.loopback() {
            // DTR -> DSR, RTS -> CTS, OUT1 -> RI, OUT2 -> DCD.
            let m = self.mcr;
            ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
        } else {
            0xb0 // DCD | DSR | CTS: a terminal is always there
        }
    }

    fn write_reg(&mut self, offset: u16, value: u8) {
        match offset {
            0 if self.dlab() => self.dll = value,
            0 => self.transmit(value),
            1 if self.dlab() => self.dlm = value,
            1 => {
                // Enabling the THRE interrupt while THR is empty raises it at once.
                if value & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0f;
            }
            2 => {
                self.fifo_enabled = value & FCR_ENABLE != 0;
                if value & FCR_CLEAR_RX != 0 || !self.fifo_enabled {
                    self.input.lock().clear();
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {} // LSR and MSR are read-only
        }
    }

    fn read_reg(&mut self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.dll,
            0 => self.input.lock().pop_front().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let iir = self.iir();
                if iir & 0x0f == IIR_THRE {
                    self.thre_pending = false;
                }
                iir
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let dr = if self.input.lock().is_empty() {
                    0
                } else {
                    LSR_DR
                };
                LSR_THRE | LSR_TEMT | dr
            }
            6 => self.msr(),
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// The register offset of byte `i` of an access at `port`, if it is one of ours.
    fn offset(&self, port: u16, i: usize) -> Option<u16> {
        let p = u16::try_from(i).ok().and_then(|i| port.checked_add(i))?;
        let off = p.checked_sub(self.base)?;
        (off < 8).then_some(off)
    }
}

impl PortDevice for Uart16550 {
    fn name(&self) -> &'static str {
        "uart16550"
    }

    fn ports(&self) -> Vec<u16> {
        (0..8).filter_map(|i| self.base.checked_add(i)).collect()
    }

    /// Each item is split into bytes to consecutive ports, as a wide `out` reaches them.
    fn write(&mut self, port: u16, size: u8, data: &[u8]) {
        for item in data.chunks(usize::from(size.max(1))) {
            for (i, &b) in item.iter().enumerate() {
                if let Some(off) = self.offset(port, i) {
                    self.write_reg(off, b);
                }
            }
        }
    }

    fn read(&mut self, port: u16, size: u8, out: &mut [u8]) {
        for item in out.chunks_mut(usize::from(size.max(1))) {
            for (i, b) in item.iter_mut().enumerate() {
                *b = match self.offset(port, i) {
                    Some(off) => self.read_reg(off),
                    None => 0xff,
                };
            }
        }
    }
}
