/**
 * An educational accelerator in the spirit of QEMU's "edu" device: the
 * smallest device that has everything a driver course needs. BAR0 holds the
 * registers below; BAR2 is a 4 KiB buffer the DMA engine copies to and from
 * (the DMA engine sees it at BUFFER). Interrupts go out as MSI when the guest
 * enabled it, else on INTA.
 *
 *   0x00 ID          1.0 in 0xRRrr00ed form         0x24 IRQ_STATUS  why the interrupt is raised
 *   0x04 LIVENESS    reads back the inverse         0x60 IRQ_RAISE   raises an interrupt with this status
 *   0x08 FACTORIAL   write n, later reads n!        0x64 IRQ_ACK     clears these status bits
 *   0x20 STATUS      bit 0 computing, bit 7 interrupt after the factorial
 *   0x80 DMA_SRC, 0x88 DMA_DST, 0x90 DMA_COUNT (64-bit), 0x98 DMA_CMD: bit 0 start,
 *        bit 1 from the buffer to guest memory (else the other way), bit 2 interrupt when done
 *
 * The factorial and the DMA finish after the write that starts them has been
 * answered, as on a real card: a driver polls STATUS or DMA_CMD, or waits for
 * the interrupt.
 */
import { definePciDevice, defineRegisters } from 'muser';

export const BUFFER = 0x40000;
export const BUFFER_SIZE = 4096;
export const IRQ_FACTORIAL = 0x1;
export const IRQ_DMA = 0x100;

const dword = { sizes: [4] } as const;
const qword = { width: 8, sizes: [4, 8] } as const;

const regs = defineRegisters({
  ID: { ...dword, offset: 0x00, access: 'ro', reset: 0x010000ed },
  LIVENESS: { ...dword, offset: 0x04, read: (v: number) => ~v >>> 0 },
  FACTORIAL: { ...dword, offset: 0x08, write: (n: number) => startFactorial(n) },
  STATUS: { ...dword, offset: 0x20, fields: { COMPUTING: { shift: 0, access: 'ro' }, IRQ_AFTER_FACTORIAL: { shift: 7 } } },
  IRQ_STATUS: { ...dword, offset: 0x24, access: 'ro' },
  IRQ_RAISE: { ...dword, offset: 0x60, access: 'wo', write: (bits: number) => raise(bits) },
  IRQ_ACK: { ...dword, offset: 0x64, access: 'wo', write: (bits: number) => acknowledge(bits) },
  DMA_SRC: { ...qword, offset: 0x80 },
  DMA_DST: { ...qword, offset: 0x88 },
  DMA_COUNT: { ...qword, offset: 0x90 },
  DMA_CMD: { ...qword, offset: 0x98, fields: { START: { shift: 0 }, TO_RAM: { shift: 1 }, IRQ: { shift: 2 } }, write: () => void startDma() },
});

export const edu = definePciDevice({
  name: 'edu',
  id: { vendor: 0x1de5, device: 0xed00, classCode: 0x00ff00 },
  bars: { 0: { size: 0x1000, registers: regs }, 2: { size: BUFFER_SIZE, memory: true } },
  irqs: { intx: true, msi: 1 },
});

function raise(bits: number): void {
  regs.IRQ_STATUS.value = (regs.IRQ_STATUS.value | bits) >>> 0;
  edu.irq();
}

function acknowledge(bits: number): void {
  regs.IRQ_STATUS.value = (regs.IRQ_STATUS.value & ~bits) >>> 0;
  if (regs.IRQ_STATUS.value === 0) edu.irqDone();
}

function startFactorial(n: number): void {
  regs.STATUS.COMPUTING = 1;
  setImmediate(() => {
    let f = 1;
    for (let i = 2; i <= n && f !== 0; i++) f = Math.imul(f, i) >>> 0;
    regs.FACTORIAL.value = f;
    regs.STATUS.COMPUTING = 0;
    if (regs.STATUS.IRQ_AFTER_FACTORIAL) raise(IRQ_FACTORIAL);
  });
}

/** Runs after the write that started it was answered (the hook does not wait for it). */
async function startDma(): Promise<void> {
  const cmd = regs.DMA_CMD;
  if (!cmd.START) return;
  const count = Number(regs.DMA_COUNT.value);
  const src = regs.DMA_SRC.value;
  const dst = regs.DMA_DST.value;
  const buffer = edu.memory(2);
  const at = Number((cmd.TO_RAM ? src : dst) - BigInt(BUFFER));
  if (at < 0 || at + count > BUFFER_SIZE) throw new RangeError(`DMA of ${count} bytes at 0x${(BUFFER + at).toString(16)} is outside the buffer`);
  if (cmd.TO_RAM) await edu.dma.write(dst, buffer.subarray(at, at + count));
  else buffer.set(await edu.dma.read(src, count), at);
  cmd.START = 0;
  if (cmd.IRQ) raise(IRQ_DMA);
}

export default edu;
